"""What a run consumed, summed over processes, and where a budgeted run must stop.

This is the point of the project: two runs are only comparable if we know, exactly, how much of each
unit they consumed. Every micro-batch, each process contributes a (batch, 5) matrix of per-sample
counts; the matrices are gathered, so every process sees every count and takes the same decision
about the last batch. A budget ends *exactly* at its target where the unit allows it: samples and
visual tokens by keeping a prefix of samples (rank by rank, earlier passes first), supervised tokens by also masking the
tail of one sample's labels; text tokens cannot be split, so the closest sample boundary wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_recipes.counters import CONSUMED_COUNTERS
from train.run_record import RunRecord

COUNTERS = CONSUMED_COUNTERS  # the matrices' column order


def batch_matrix(counts: dict, batch_size: int) -> torch.Tensor:
    """(batch_size, 5) per-sample counts; rows of absent samples are -1 (so gathers have one shape)."""
    n = len(counts["samples"])
    m = torch.full((batch_size, len(COUNTERS)), -1, dtype=torch.long)
    if n:
        m[:n] = torch.tensor([counts[c] for c in COUNTERS], dtype=torch.long).T
    return m


# One extra row per micro-batch carries what is not per sample, so that a single gather per optimizer
# step tells every process everything: the samples the reader dropped for length, and where the reader
# stands in its stream (for an exact resume).
META = ("dropped_too_long", "dropped_over_context", "reader", "position", "pass_index")
assert len(META) == len(COUNTERS)


def step_matrix(batches, batch_size: int) -> torch.Tensor:
    """(micro-batches, batch_size + 1, 5): per-sample counts (`batch_matrix`; a filler row is no sample),
    then the META row."""
    rows = []
    for b in batches:
        meta = torch.tensor([[b.dropped.get("too_long", 0), b.dropped.get("over_context", 0), b.reader, b.position,
                              b.pass_index]], dtype=torch.long)
        rows.append(torch.cat([batch_matrix(b.sample_counts(), batch_size), meta]))
    return torch.stack(rows)


@dataclass
class Decision:
    keep: list[int]                     # samples each rank keeps of its micro-batch
    partial: dict[int, int] = field(default_factory=dict)  # rank -> supervised tokens kept of its last sample
    done: bool = False                  # the budget is reached with this micro-batch


def plan(gathered: torch.Tensor, unit: str | None, remaining: int | None,
         passes: list[int] | None = None) -> Decision:
    """Which samples of this micro-batch (all ranks: gathered[rank, i, counter]) fit the budget.

    The budget is filled rank by rank, each rank's samples as a prefix; ranks whose micro-batch is of an
    earlier pass over the data (`passes`, each rank's `Batch.pass_index`) come first. Readers' shares
    differ by one sample, so at the end of a pass one reader may already be in the next: a budget of the
    whole data used to take that reader's repeat and leave another reader's last sample unseen."""
    W, B, _ = gathered.shape
    present = [int((gathered[r, :, 0] >= 0).sum()) for r in range(W)]
    if unit is None:
        return Decision(present)
    u = COUNTERS.index(unit)
    keep, partial, left = [0] * W, {}, remaining
    for r in sorted(range(W), key=lambda r: (passes[r] if passes else 0, r)):
        for i in range(present[r]):
            v = int(gathered[r, i, u])
            if v <= left:
                keep[r] += 1
                left -= v
                continue
            if unit == "supervised_tokens" and left > 0:
                keep[r] += 1
                partial[r] = left
                left = 0
            elif unit == "text_tokens" and v - left < left:
                keep[r] += 1  # overshooting by less than we would undershoot
                left -= v
            return Decision(keep, partial, done=True)
        # a later rank's samples only count once this rank's are all in: the order is (pass, rank)-major
    return Decision(keep, partial, done=left <= 0)


def forward_rows(counts: torch.Tensor, keep: list[int]) -> list[list[int]]:
    """The rows of its micro-batch each rank runs through the model (`counts`: (ranks, batch, counters)): its
    kept prefix; when it keeps none, one row under a zero loss (every process joins every step), one with
    images when it has any, so that the vision tower and projector run wherever they can."""
    out = []
    for r, k in enumerate(keep):
        if k:
            out.append(list(range(k)))
            continue
        row = image_row(counts[r], [])
        if row is None:  # no sample with images: the first present one (row 0 when none is)
            row = next((i for i in range(counts.shape[1]) if counts[r, i, 0] >= 0), 0)
        out.append([row])
    return out


def image_row(counts: torch.Tensor, rows: list[int]) -> int | None:
    """A present row of one rank's micro-batch (`counts`: (batch, counters)) that holds images and is not in
    `rows`: what that rank can forward under a masked loss when its `rows` hold none (None: no such row)."""
    images = COUNTERS.index("images")
    return next((i for i in range(counts.shape[0]) if i not in rows and counts[i, 0] >= 0
                 and counts[i, images] > 0), None)


def has_images(counts: torch.Tensor, rows: list[int]) -> bool:
    """Whether one rank's `rows` (of `counts`: (batch, counters)) hold an image or frame."""
    images = COUNTERS.index("images")
    return any(int(counts[i, images]) > 0 for i in rows)


def kept_totals(gathered: torch.Tensor, d: Decision) -> dict:
    """Counts consumed by this micro-batch after the decision, summed over ranks."""
    tot = dict.fromkeys(COUNTERS, 0)
    for r, k in enumerate(d.keep):
        for i in range(k):
            row = gathered[r, i].tolist()
            for c, v in zip(COUNTERS, row):
                tot[c] += v
        if r in d.partial and k:
            last = gathered[r, k - 1].tolist()
            tot["supervised_tokens"] += d.partial[r] - last[COUNTERS.index("supervised_tokens")]
    return tot


def mask_supervised_tail(labels: torch.Tensor, row: int, keep_tokens: int, ignore: int = -100) -> None:
    """Keep only the first `keep_tokens` supervised labels of one row (in place)."""
    pos = (labels[row] != ignore).nonzero().flatten()
    labels[row, pos[keep_tokens:]] = ignore


def reference_consumption(match_to: str, tracking_uri: str) -> tuple[dict, dict]:
    """(consumed counts, description) of a reference run: a checkpoint dir with run.json, or an MLflow run id."""
    p = Path(match_to)
    if (p / "run.json").exists():
        run = RunRecord.read(p / "run.json", require=("consumed",))
        return run.consumed, {"checkpoint": str(p), "mlflow_run_id": run.mlflow_run_id, "recipe": run.recipe}
    if p.exists() or "/" in match_to:
        raise FileNotFoundError(f"--match_to {match_to}: no run.json there (expected a finished run's directory)")
    from train.tracking import run_metrics

    metrics = run_metrics(tracking_uri, match_to)
    consumed = {c: int(metrics[f"consumed/{c}"]) for c in COUNTERS if f"consumed/{c}" in metrics}
    if not consumed:
        raise ValueError(f"--match_to {match_to}: MLflow run has no consumed/* metrics (not a finished training run?)")
    return consumed, {"mlflow_run_id": match_to}
