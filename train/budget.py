"""A run's budget (where it stops) and the length of its learning-rate schedule, decided before step 1.

The budget is `max_steps`, `max_samples`, a reference run's consumption (`match_to` + `match_by`), or
an amount given directly (`budget` + `budget_unit`, what a study gives each run), stopped exactly as a
match is.
The schedule must know its length before the first step: a cosine that is sized from the first
step's consumption (what this trainer once did) changes with the first batch's luck. So:

- max_steps: the schedule spans max_steps;
- a budget in samples: ceil(samples / samples per optimizer step);
- a budget in another unit: the data's mean of that unit per sample, from the manifest's counts
  when the build counted it with this model's processor, else measured on a fixed prescan of the
  first samples of the shards (the same samples on every process and every rerun); then as above.

`schedule_steps` overrides all of that. Both the budget and how the length was found go into
`run.json` (`budget`, `schedule`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from data_recipes.counters import TOKEN_UNITS
from train import accounting

PRESCAN_SAMPLES = 64


@dataclass
class Budget:
    unit: str | None = None          # None: only max_steps bounds the run
    target: int | None = None
    reference: dict | None = None    # the matched run (checkpoint / MLflow id / recipe)
    schedule_steps: int = 0
    schedule_source: str = ""
    per_sample: float | None = None  # mean of `unit` per sample used for the schedule

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_budget(cfg, tracking_uri: str) -> Budget:
    """Unit and target of the run, from match_to or budget (either wins) or max_samples; None when only max_steps."""
    if cfg.match_to:
        consumed, reference = accounting.reference_consumption(cfg.match_to, tracking_uri)
        if cfg.match_by not in consumed:
            raise ValueError(f"--match_to {cfg.match_to}: reference run has no '{cfg.match_by}' count")
        return Budget(cfg.match_by, int(consumed[cfg.match_by]), reference)
    if cfg.budget:
        return Budget(cfg.budget_unit, cfg.budget)
    if cfg.max_samples:
        return Budget("samples", cfg.max_samples)
    return Budget()


def per_sample_from_manifest(manifest: dict, unit: str, model_dir: str | Path, video_input: str = "images",
                             max_pixels: int | None = None) -> float | None:
    """Mean `unit` per sample from a manifest, when it counted that unit with this model's processor,
    on the same video path and under the same resize budget as training feeds."""
    from train.data import manifest_max_pixels

    counts = manifest.get("counts", {})
    n = counts.get("samples", 0)
    if not n or unit not in counts:
        return None
    if unit in TOKEN_UNITS:
        model = manifest.get("tokens_model")
        if not model or Path(str(model)).resolve() != Path(model_dir).resolve():
            return None
        if manifest.get("video_input", "images") != video_input or manifest_max_pixels(manifest) != max_pixels:
            return None
    return counts[unit] / n


def prescan_per_sample(urls: list[str], count, unit: str, n: int = PRESCAN_SAMPLES, chunk: int = 8) -> float:
    """Mean `unit` per sample over the first `n` samples of the shards (in manifest order), counted by
    `count(raw samples) -> per-sample counts` exactly as training batches are (`train.data.encode_samples`)."""
    import webdataset as wds

    raw = []
    for url in urls:
        for s in wds.tarfile_to_samples(handler=wds.ignore_and_continue)(iter([{"url": url}])):
            if "json" in s:
                raw.append(s)
            if len(raw) >= n:
                break
        if len(raw) >= n:
            break
    if not raw:
        raise ValueError(f"prescan found no samples in {len(urls)} shards")
    total = 0
    for i in range(0, len(raw), chunk):
        total += sum(count(raw[i:i + chunk])[unit])
    return total / len(raw)


def plan_schedule(budget: Budget, cfg, samples_per_step: int, per_sample=None) -> Budget:
    """Fill budget.schedule_steps (and where it came from); `per_sample()` is called only if needed."""
    if cfg.schedule_steps:
        budget.schedule_steps, budget.schedule_source = cfg.schedule_steps, "schedule_steps"
        return budget
    steps, source = 0, ""
    if budget.unit == "samples":
        steps, source = math.ceil(budget.target / samples_per_step), f"{budget.target} samples / {samples_per_step} per step"
        budget.per_sample = 1.0
    elif budget.unit is not None:
        mean, how = per_sample()
        budget.per_sample = mean
        steps = math.ceil(budget.target / mean / samples_per_step)
        source = f"{budget.target} {budget.unit} / {mean:.2f} per sample ({how}) / {samples_per_step} samples per step"
    if cfg.max_steps and (not steps or cfg.max_steps < steps):
        steps, source = cfg.max_steps, "max_steps"
    budget.schedule_steps, budget.schedule_source = steps, source
    return budget
