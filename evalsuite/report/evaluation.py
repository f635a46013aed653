"""The comparison a researcher reads: `CKPT_DIR/report.md`, `report/*.png` and `report/metrics.csv`.

    python -m evalsuite report ckpt/          (also the last step of `python -m evalsuite all`)

Sections, in the order of report.md:

* **Findings**: the paper's three claims, one verdict row each, computed from paired contrasts and
  their bootstrap CIs (`verdicts`), never written by hand. Every contrast is oriented so that the
  paper's direction is positive:
  F1 gain(image) - gain(video) (vCoT helps the image run more), F2 drop_text(image) - drop_text(video)
  (the image run loses more when the infills come from another video), F3 acc(video) - acc(image) on
  I-RAVEN. F1 and F2 are judged on temporal items, one row per F; F3 once.
* **vCoT**: per checkpoint, F and item kind (overall, static, temporal) the accuracies of every
  condition and the gain; the **floors** a model must beat (its own blind accuracy and the best
  options-only guesser: chance, 20%, only as a footnote), its text-only accuracy beside its blind one
  (a model whose text-only CI reaches down to its blind accuracy does not read its infills); the pick
  rates of the time-reversed answer; for generate scoring the extraction failures with strict and
  random-fill accuracy; how each checkpoint was evaluated.
* **Pairs**: for each matched pair of training runs (`matched_pairs`) the scale-match audit and the
  three contrasts with what they are made of (each run's gain, its gain relative to headroom, its
  drop). A run trained on the video run's clips with the frames shuffled (`"frame_order": "shuffled"`
  in run.json, or a recipe name containing "shuffled") is the **control**: it takes the image run's
  place in the same contrasts, labelled as what it is. Contrasts are refused, with the settings that
  differ, between evaluations made differently (`evaluation_differences`).
* **Robustness** (the perturbation drops per kind) and **I-RAVEN** (per configuration; a run whose
  answers sit on one candidate is shown as uninformative instead of an accuracy), then I-RAVEN **by rule
  group** (spatial: an active Number/Position rule; abstract: an active Type/Size/Color rule; abstract
  only: abstract and not spatial; see `evalsuite.benchmarks.iraven.groups`): each checkpoint's accuracy per group
  and per active rule type, and per matched pair acc(video) - acc(other run) per group, paired over the
  puzzles of that group.
* **Not evaluated as asked** (`caveats_section`): items a benchmark could not give (missing videos),
  items that failed, and items whose sequences passed the model's context (`evalsuite.context`), per
  checkpoint and task; then each checkpoint's longest sequence against its context.

Every number comes from the checkpoints' `eval/<task>/metrics.json`, `predictions.jsonl` and
`run.json`; any key missing from an older evaluation shows as a blank. Paired contrasts resample
items (vCoT questions, I-RAVEN puzzles) with `--n_boot` and `--seed` when the report is asked for them
(`python -m evalsuite report DIR --n_boot N --seed S`; `all` passes its own), else with the evaluations'
own: every contrast takes them from one `Bootstrap`. The report is
also logged as artifacts of a "comparison" MLflow run, with the contrasts as metrics and the verdicts
as tags.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_recipes.counters import CONSUMED_COUNTERS
from data_recipes.files import atomic_write_text
from evalsuite.checkpoints import made_on_other_weights
from evalsuite.comparisons import block_of, fkeys
from evalsuite.config import ConfigError
from evalsuite.context import overrun
from evalsuite.outputs import is_live_task
from evalsuite.benchmarks.iraven.groups import ACTIVE_RULES, GROUPS, in_group
from evalsuite.stats import (accuracy_ci, contrast_of_differences, paired_bootstrap_sums, paired_difference,
                             percentile_interval)
from train.run_record import RunRecord

AUDIT = CONSUMED_COUNTERS
DEFAULT_N_BOOT = 1000
"""Bootstrap replicates of a contrast when the evaluations did not record their `n_boot`."""
ITEM_KINDS = ("overall", "static", "temporal")
"""How the vCoT tables split the items: all of them, then the two kinds of synthetic items."""
ROLES = {"image": "image run", "video": "video run", "shuffled": "shuffled-frames video run (control)",
         "base": "base model", "adapter": "adapter"}


def _est(e) -> bool:
    """Whether `e` is an estimate the tables can print ({value, ...} with a number)."""
    return isinstance(e, dict) and isinstance(e.get("value"), (int, float)) and not isinstance(e.get("value"), bool)


def _has_ci(e: dict) -> bool:
    return all(isinstance(e.get(k), (int, float)) for k in ("ci_low", "ci_high"))


def _pct(e: dict | None) -> str:
    if not _est(e):
        return ""
    if not _has_ci(e):  # recorded without an interval (failure rates before they had one)
        return f"{100 * e['value']:.1f}"
    return f"{100 * e['value']:.1f} [{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}]"


def _pts(e: dict | None) -> str:
    if not _est(e):
        return ""
    p = f", p={e['p_value']:.2g}" if isinstance(e.get("p_value"), (int, float)) else ""
    if not _has_ci(e):
        return f"{100 * e['value']:+.1f}{p}"
    return f"{100 * e['value']:+.1f} [{100 * e['ci_low']:+.1f}, {100 * e['ci_high']:+.1f}]{p}"


def _ratio(e: dict | None) -> str:
    """A relative gain (a share of the headroom), in %."""
    if not _est(e):
        return ""
    return f"{100 * e['value']:+.0f}% [{100 * e['ci_low']:+.0f}, {100 * e['ci_high']:+.0f}]"


class Checkpoint:
    """One evaluated checkpoint: its name, training info (run.json) and per-task results."""

    def __init__(self, root: Path, path: Path):
        # a report of one checkpoint (root = its directory) names it, not "."
        self.root, self.path, self.name = root, path, path.name if path == root else str(path.relative_to(root))
        run = path / "run.json"
        self.run = RunRecord.read(run) if run.exists() else None
        self.metrics, self.rows = {}, {}
        self.other_weights: list[str] = []
        """Tasks whose results were made on other weights than the directory holds now: left out."""
        for task_dir in sorted((path / "eval").glob("*")):
            m = task_dir / "metrics.json"
            if m.exists() and is_live_task(task_dir.name):  # not outputs a rerun with other settings moved aside
                metrics = json.loads(m.read_text())
                if made_on_other_weights(path, metrics):
                    self.other_weights.append(task_dir.name)
                else:
                    self.metrics[task_dir.name] = metrics

    @property
    def run(self) -> RunRecord | None:
        """The training run's record (run.json); None for a base model."""
        return self._run

    @run.setter
    def run(self, value: RunRecord | dict | None) -> None:
        """A record, or a decoded run.json (checked as `RunRecord.from_dict` checks a file)."""
        self._run = RunRecord.from_dict(value, self.path / "run.json") if isinstance(value, dict) else value

    @property
    def kind(self) -> str:
        """The recipe's kind from run.json ("image", "video"); "base" for a model without one. Tables
        show the `role`, which differs only for the shuffled-frames control."""
        return "base" if self.run is None else self.run.kind or "adapter"

    @property
    def role(self) -> str:
        """What the run is in the study: "shuffled" for the shuffled-frames control (run.json says
        `"frame_order": "shuffled"`, or its recipe's name contains "shuffled"), else its `kind`."""
        run = self.run
        if run is not None and (run.frame_order == "shuffled" or "shuffled" in (run.recipe or "")):
            return "shuffled"
        return self.kind

    @property
    def consumed(self) -> dict:
        """{counter: total} the training run consumed (run.json); {} for a base model or an older record."""
        return (self.run.consumed if self.run is not None else None) or {}

    @property
    def match(self) -> dict:
        """The scale-match record (run.json's `match`); {} for a run that was not matched to another."""
        return (self.run.match if self.run is not None else None) or {}

    def task_metrics(self, task: str) -> dict:
        """`metrics` of eval/<task>/metrics.json, {} when the task was not evaluated."""
        m = (self.metrics.get(task) or {}).get("metrics")
        return m if isinstance(m, dict) else {}

    def settings(self, task: str) -> dict:
        s = (self.metrics.get(task) or {}).get("settings")
        return s if isinstance(s, dict) else {}

    def predictions(self, task: str) -> list[dict]:
        if task not in self.rows:
            f = self.path / "eval" / task / "predictions.jsonl"
            self.rows[task] = [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []
        return self.rows[task]


def discover(root: Path) -> list[Checkpoint]:
    dirs = sorted({p.parents[2] for p in root.rglob("eval/*/metrics.json") if is_live_task(p.parent.name)})
    return [Checkpoint(root, d) for d in dirs]


@dataclass(frozen=True)
class Pair:
    """Two training runs matched in consumption, by role: `video` is the (ordered-frames) video run,
    `subject` the run contrasted with it (the image run, or the shuffled-frames control); `matched` is the
    one whose run.json holds the match record (the scale-match audit)."""

    subject: Checkpoint
    video: Checkpoint
    matched: Checkpoint

    @property
    def label(self) -> str:
        """Short name of the subject's role in tables: "image" or "shuffled"."""
        return self.subject.role

    @property
    def control(self) -> bool:
        return self.subject.role == "shuffled"

    @property
    def name(self) -> str:
        return f"{self.subject.name} vs {self.video.name}"

    def __iter__(self):  # `subject, video = pair`
        return iter((self.subject, self.video))


def _referenced(c: Checkpoint, ckpts: list[Checkpoint]) -> Checkpoint | None:
    """The checkpoint `c`'s run.json says it was matched to, or None when none here is, or several may be.

    The reference's MLflow run id, when both run.json files record one, decides. Else its path as recorded:
    `--match_to` as given, relative to the directory the run was launched from, which the report does not
    know. It is tried relative to the checkpoint's own directory, the working directory, the report's
    directory and the one above it, then as the only checkpoint here with that directory name. Paths that
    lead to two different checkpoints (`--match_to video_100k` launched in seed0/ and in seed1/, read from
    one of them) give None rather than a run of another seed; the report lists such runs
    (`unresolved_references`)."""
    ref_record = c.match.get("reference") or {}
    run_id = ref_record.get("mlflow_run_id")
    if run_id:
        by_id = [x for x in ckpts if x is not c and x.run is not None and x.run.mlflow_run_id == run_id]
        if len(by_id) == 1:
            return by_id[0]
    ref = ref_record.get("checkpoint")
    if not ref:
        return None
    by_path = {x.path.resolve(): x for x in ckpts}
    ref = Path(ref)
    places = [ref] if ref.is_absolute() else [c.path.parent / ref, ref, c.root / ref, c.root.parent / ref]
    found = list({id(x): x for p in places if (x := by_path.get(p.resolve())) is not None}.values())
    if found:
        return found[0] if len(found) == 1 else None
    named = [x for x in ckpts if x.path.name == ref.name]
    return named[0] if len(named) == 1 else None


def unresolved_references(ckpts: list[Checkpoint]) -> list[tuple[Checkpoint, str]]:
    """(checkpoint, its recorded reference) for every run matched to a checkpoint the report cannot tell
    among those here: missing, or named so that it could be more than one (`_referenced`)."""
    return [(c, str(c.match["reference"].get("checkpoint") or c.match["reference"].get("mlflow_run_id")))
            for c in ckpts if (c.match.get("reference") or {}) and _referenced(c, ckpts) is None]


def matched_pairs(ckpts: list[Checkpoint]) -> list[Pair]:
    """Every pair of runs here of which one's run.json says it was matched to the other.

    Roles come from run.json, never from which run holds the match record: the ordered video run is
    `video`, the other one `subject` (an image run, or the shuffled-frames control, which is never called
    the image run). A match in which neither or both are ordered video runs (a shuffled-frames run matched
    to the image run, two video runs) pairs no findings: each finding contrasts a run with the video run,
    so such a pair would report verdicts about a "video run" that is not one. Pairs with an image run come
    first, the controls after them."""
    pairs, seen = [], set()
    for c in ckpts:
        other = _referenced(c, ckpts)
        if other is None or other is c or (c.role == "video") == (other.role == "video"):
            continue
        subject, video = (other, c) if c.role == "video" else (c, other)
        if (id(subject), id(video)) not in seen:
            seen.add((id(subject), id(video)))
            pairs.append(Pair(subject, video, matched=c))
    return sorted(pairs, key=lambda p: p.control)  # image pairs first, then the controls


# --- how a checkpoint was evaluated ------------------------------------------------------------------
ITEM_SET = ("benchmark", "limit", "frames", "seed", "data")
"""Settings that pick the evaluated items: two evaluations pair item by item only when these agree."""
NORMS = {"sum": "total log-likelihood", "mean": "log-likelihood per token", "chars": "log-likelihood per character"}
IRAVEN_SET = ("data", "generator_seed", "per_config", "layout", "protocol", "scoring")
"""Settings of two I-RAVEN evaluations that must agree for their accuracies to be paired puzzle by puzzle."""
IF_RECORDED = ("item_set", "precision", "prompts", "infill_tokens", "judge", "answer_tokens", "answer_instruction")
"""Settings that must also agree, compared when both evaluations record them: an evaluation made before one
was recorded is not refused for lacking it. `precision` (a mixed cluster's `--precision auto` gives bf16 on
one kind of GPU and fp16 on another, for the evaluated model and for a generator of infills alike), the
prompts' hash, and under generate scoring the judge and the answer's length. `infill_tokens` counts only for
generated infills (oracle infills are written, not generated)."""


def _loglik_norm(settings: dict) -> str | None:
    """The loglik normalisation of an evaluation; None for generate scoring (it does not apply). An
    evaluation that did not record one summed the option's log-probabilities (the only way before the flag)."""
    return settings.get("loglik_norm", "sum") if settings.get("scoring") == "loglik" else None


def _if_recorded(settings: dict) -> dict:
    out = {k: settings[k] for k in IF_RECORDED if k in settings}
    if str(settings.get("infills", "")).startswith("oracle"):
        out.pop("infill_tokens", None)
    return out


def compared_settings(settings: dict) -> dict:
    """The settings of a vcot (or shuffle) evaluation that must agree for two checkpoints to be contrasted.

    `protocol` missing means `custom` (evaluations before presets); `loglik_norm` counts for loglik scoring
    only. `video_input` and `max_pixels` are deliberately absent: an image run and a video run may feed
    frames differently by design (the report says how each did). The `IF_RECORDED` settings (the recorded
    `item_set` digest, which checks the items themselves, the precision, ...) count when both have them."""
    out = {"protocol": settings.get("protocol", "custom"), "scoring": settings.get("scoring"),
           "loglik_norm": _loglik_norm(settings), "infills": settings.get("infills")}
    out |= {k: settings.get(k) for k in ITEM_SET}
    return out | _if_recorded(settings)


def iraven_compared(settings: dict) -> dict:
    """The settings of an I-RAVEN evaluation that must agree for two checkpoints' puzzles to be paired."""
    return {k: settings.get(k) for k in IRAVEN_SET} | _if_recorded(settings)


def _differences(ca: dict, cb: dict) -> list[tuple[str, object, object]]:
    return [(k, ca.get(k), cb.get(k)) for k in dict.fromkeys([*ca, *cb])
            if (k not in IF_RECORDED or k in ca and k in cb) and ca.get(k) != cb.get(k)]


def evaluation_differences(a: dict, b: dict) -> list[tuple[str, object, object]]:
    """(setting, value in a, value in b) for every compared setting in which two vcot evaluations differ."""
    return _differences(compared_settings(a), compared_settings(b))


def iraven_differences(a: dict, b: dict) -> list[tuple[str, object, object]]:
    """(setting, a, b) for every compared setting in which two I-RAVEN evaluations differ."""
    return _differences(iraven_compared(a), iraven_compared(b))


def _show(value, setting: str = "") -> str:
    if value is None:
        return "not used (generate scoring)" if setting == "loglik_norm" else "not set"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _scoring(settings: dict) -> str:
    norm = _loglik_norm(settings)
    if not norm:
        return f"`{settings.get('scoring')}`"
    unrecorded = "" if "loglik_norm" in settings else ": evaluated before --loglik-norm"
    return f"`{settings.get('scoring')}` ({NORMS.get(norm, norm)}{unrecorded})"


def evaluated_as(settings: dict) -> str:
    """`benchmark `egoschema`, protocol `paper`, scoring `generate`, infills `...``: one evaluation's setup."""
    return (f"benchmark `{settings.get('benchmark')}`, protocol `{settings.get('protocol', 'custom')}`, "
            f"scoring {_scoring(settings)}, infills `{settings.get('infills')}`")


_SHOWN = {"vcot": "vCoT", "text_only": "text-only"}


def _names(conditions: list[str]) -> str:
    names = [_SHOWN.get(c, c) for c in conditions]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def frames_fed(settings: dict) -> str:
    """How one evaluation fed its frames, from its settings (video_input per condition, max_pixels).

    Evaluations made before these were recorded fed every frame as an image, at its rendered or decoded size."""
    paths = settings.get("video_input") or {}
    native = [c for c, p in paths.items() if p == "native"]
    parts = [f"{_names(native)} as one clip through the family's video path (native)"] if native else []
    if not native:
        parts.append("every frame as an image")
    elif len(native) < len(paths):
        parts.append(f"{_names([c for c in paths if c not in native])} as images")
    budget = settings.get("max_pixels")
    size = (f"at most {budget:,} pixels per frame (aspect kept)" if budget
            else "no max_pixels (frames as rendered or decoded)")
    return ", ".join(parts) + "; " + size


def frames_line(ckpts: list[Checkpoint], task: str) -> str:
    """One line: how each checkpoint's evaluation of `task` fed its frames (once when all agree)."""
    fed = {c.name: frames_fed(c.settings(task)) for c in ckpts if task in c.metrics}
    if len(set(fed.values())) == 1:
        return f"Frames fed: {next(iter(fed.values()))}."
    return "Frames fed: " + "; ".join(f"`{name}`: {how}" for name, how in fed.items()) + "."


# --- what one checkpoint's results say, per item and per run (also read by evalsuite.report.study) --
def item_correctness(c: Checkpoint, task: str, f: int | None = None, condition: str | None = None,
                     items: str = "overall") -> dict[str, int]:
    """{item: 1 if right else 0} of one checkpoint's rows of `task` (eval/<task>/predictions.jsonl), at F
    `f` in `condition` (None: any), on the items of one kind ("overall": all). Rows that could not be
    evaluated (`error`) are left out. The per-item vectors every paired contrast of this report and of
    `evalsuite.report.study` is made of."""
    out = {}
    for r in c.predictions(task):
        if r.get("error") or "item" not in r:
            continue
        if (f is not None and r.get("frames") != f) or (condition is not None and r.get("condition") != condition):
            continue
        if items != "overall" and r.get("kind") != items:
            continue
        out[r["item"]] = int(bool(r.get("correct")))
    return out


def uninformative_reason(m: dict) -> str:
    """Why an I-RAVEN run is uninformative, from its summary `m` (eval/iraven/metrics.json's `metrics`,
    written by `evalsuite.tasks.iraven`): "position bias 73% on candidate C", else the recorded
    `informative_reason`. Shown instead of the run's accuracy here and in `evalsuite.report.study`; only
    meaningful for a summary with `informative: false`. A run judged by its unreadable answers
    (`uninformative_by: failed`, generate scoring) gives that reason."""
    bias = m.get("position_bias")
    if m.get("uninformative_by") != "failed" and isinstance(bias, dict) and isinstance(bias.get("value"), (int, float)):
        where = bias.get("letter")
        if where is None and isinstance(bias.get("index"), int):
            where = "ABCDEFGH"[bias["index"]] if 0 <= bias["index"] < 8 else bias["index"]
        return f"position bias {100 * bias['value']:.0f}% on candidate {where}"
    return str(m.get("informative_reason") or "answers sit on one candidate")


# --- paired contrasts from the prediction rows -----------------------------------------------------
def _aligned(*vectors: dict[str, int]) -> tuple[int, list[list[int]]]:
    """The items every vector has, and each vector's values on them in one order."""
    keys = sorted(set.intersection(*(set(v) for v in vectors))) if vectors else []
    return len(keys), [[v[k] for k in keys] for v in vectors]


def relative_gain(vcot, base, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, alpha: float = 0.05) -> dict | None:
    """The gain relative to headroom, (acc_vcot - acc_base) / (1 - acc_base), with a paired bootstrap CI.

    The share of what the frames alone got wrong that the infills win back (net): a gain of 5 points
    means more to a model at 90% than at 30%. The CI resamples items and recomputes the ratio on each
    resample (`stats.paired_bootstrap_sums`: the same items for both conditions, the draws of
    `stats.paired_difference` for the same seed); resamples without headroom (every base answer right)
    are undefined and left out, and with none left the CI is the point. None when the observed base
    accuracy is 1 (no headroom at all).

    Raises:
        ValueError: empty input or vectors of different lengths (the message gives both), an invalid
            `n_boot` or `alpha`.
    """
    v, b = np.asarray(vcot, dtype=np.int64), np.asarray(base, dtype=np.int64)
    if v.ndim != 1 or v.size == 0 or v.shape != b.shape:
        raise ValueError(f"relative_gain needs two non-empty per-item vectors of one length, got vcot of "
                         f"{v.size} and base of {b.size} items")
    n = v.size
    if b.sum() == n:
        return None
    value = (int(v.sum()) - int(b.sum())) / (n - int(b.sum()))
    sv, sb = paired_bootstrap_sums([v, b], n_boot=n_boot, seed=seed)
    ok = sb < n
    boot = (sv[ok] - sb[ok]) / (n - sb[ok])
    low, high = percentile_interval(boot, alpha) if boot.size else (value, value)
    return {"value": float(value), "ci_low": float(low), "ci_high": float(high), "n": int(n)}


@dataclass(frozen=True)
class Bootstrap:
    """The replicates and seed of every paired contrast in the report: `--n_boot` / `--seed` of `python -m
    evalsuite report` (or of `all`, which passes its own), or None for what the compared evaluations
    recorded: the larger n_boot (`DEFAULT_N_BOOT` when neither did) and the seed (0 when none)."""
    n_boot: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n_boot is not None and (isinstance(self.n_boot, bool) or not isinstance(self.n_boot, int)
                                        or self.n_boot < 1):
            raise ConfigError(f"--n_boot must be an integer >= 1, got {self.n_boot!r}")

    def of(self, *settings: dict) -> dict:
        """{"n_boot", "seed"}, the keyword arguments of `evalsuite.stats`, for a contrast of evaluations
        made with these settings."""
        counts = [s["n_boot"] for s in settings if isinstance(s.get("n_boot"), int) and s["n_boot"] > 0]
        seeds = [s["seed"] for s in settings if isinstance(s.get("seed"), int)]
        return {"n_boot": self.n_boot if self.n_boot is not None else max(counts, default=DEFAULT_N_BOOT),
                "seed": self.seed if self.seed is not None else (seeds[0] if seeds else 0)}


def _difference_of_differences(pair: Pair, task: str, f: int, conditions: tuple[str, str], items: str,
                               boot: Bootstrap):
    """The per-item correctness of both runs in two conditions of `task` at F, aligned over the items both
    answered in both, with the (n_boot, seed) of the contrast: (n, (s_a, s_b, v_a, v_b), kw); n = 0 when
    no item is shared."""
    s, v = pair
    n, vectors = _aligned(*(item_correctness(c, task, f, cond, items) for c in (s, v) for cond in conditions))
    return n, vectors, boot.of(s.settings(task), v.settings(task))


def gain_finding(pair: Pair, f: int, items: str = "overall", boot: Bootstrap = Bootstrap()) -> dict | None:
    """F1 at F on one item kind, paired over the items both runs answered in base and vCoT:
    {"n", "contrast": gain(subject) - gain(video), "subject_gain", "video_gain", "subject_relative",
    "video_relative" (gain / headroom), "base_contrast": acc_base(video) - acc_base(subject)}; None
    without such items."""
    n, (sv, sb, vv, vb), kw = _difference_of_differences(pair, "vcot", f, ("vcot", "base"), items, boot)
    if not n:
        return None
    return {"n": n, "contrast": contrast_of_differences(sv, sb, vv, vb, **kw).to_dict(),
            "subject_gain": paired_difference(sv, sb, **kw).to_dict(),
            "video_gain": paired_difference(vv, vb, **kw).to_dict(),
            "subject_relative": relative_gain(sv, sb, **kw), "video_relative": relative_gain(vv, vb, **kw),
            "base_contrast": paired_difference(vb, sb, **kw).to_dict()}


def drop_finding(pair: Pair, f: int, items: str = "overall", boot: Bootstrap = Bootstrap()) -> dict | None:
    """F2 at F on one item kind, paired over the items both runs answered in the shuffle task's vcot and
    text conditions: {"n", "contrast": drop_text(subject) - drop_text(video), "subject_drop",
    "video_drop"} (drop_text = acc_vcot - acc_text: a loss is positive); None without such items."""
    n, (sv, st, vv, vt), kw = _difference_of_differences(pair, "shuffle", f, ("vcot", "text"), items, boot)
    if not n:
        return None
    return {"n": n, "contrast": contrast_of_differences(sv, st, vv, vt, **kw).to_dict(),
            "subject_drop": paired_difference(sv, st, **kw).to_dict(),
            "video_drop": paired_difference(vv, vt, **kw).to_dict()}


def _in_rule_group(c: Checkpoint, group: str | None) -> dict[str, int]:
    """`item_correctness` of a checkpoint's I-RAVEN rows, on the puzzles of one rule group (None: all puzzles)."""
    right = item_correctness(c, "iraven")
    if group is None:
        return right
    members = {r.get("item") for r in c.predictions("iraven") if in_group(r, group)}
    return {k: v for k, v in right.items() if k in members}


def iraven_finding(pair: Pair, group: str | None = None, boot: Bootstrap = Bootstrap()) -> dict | None:
    """F3, paired over the puzzles both runs answered (with `group`, those of one rule group in both runs'
    rows): {"n", "contrast": acc(video) - acc(subject), "subject_acc", "video_acc", "uninformative": {run
    name: reason} for each run whose I-RAVEN summary says `informative: false`}; None without shared puzzles."""
    s, v = pair
    n, (sc, vc) = _aligned(_in_rule_group(s, group), _in_rule_group(v, group))
    if not n:
        return None
    kw = boot.of(s.settings("iraven"), v.settings("iraven"))
    return {"n": n, "contrast": paired_difference(vc, sc, **kw).to_dict(),
            "subject_acc": accuracy_ci(sc, **kw).to_dict(), "video_acc": accuracy_ci(vc, **kw).to_dict(),
            "uninformative": {c.name: uninformative_reason(c.task_metrics("iraven")) for c in (s, v)
                              if c.task_metrics("iraven").get("informative") is False}}


def reads_infills(c: Checkpoint, f: int, items: str = "overall") -> bool | None:
    """Whether the checkpoint reads its infills at F: its text-only accuracy's CI lies above its blind
    accuracy. False when the CI reaches down to it (the infills alone add nothing the question does not
    give), None when either was not recorded."""
    b = block_of(c.task_metrics("vcot"), f"f{f}", items)
    text, blind = b.get("acc_text_only"), b.get("acc_blind")
    if not (_est(text) and _has_ci(text) and _est(blind)):
        return None
    return text["ci_low"] > blind["value"]


def sees_change(c: Checkpoint, f: int, items: str = "temporal", boot: Bootstrap | None = None) -> bool | None:
    """Whether the checkpoint answers `items` from frames (the `base` condition) above the floor at F: it
    leads its blind accuracy, and its accuracy's CI lies above the options-only guesser's. None when not
    recorded. The lead over blind is paired, as the study pairs it (`evalsuite.report.study`, validity):
    right from frames - right blind on the same items, judged by `verdict` as every contrast here is (CI
    above 0 and McNemar's p below `ALPHA`); only without blind prediction rows to pair (an older
    evaluation) is it the accuracy's CI above the blind accuracy's value, which ignores the blind
    accuracy's own uncertainty.

    This is the world's validity check (b) read off an evaluation: a video run that does not get here has
    not learned to see what happens between frames, and then no contrast of it can speak to reasoning
    between frames."""
    m = c.task_metrics("vcot")
    b = block_of(m, f"f{f}", items)
    acc, blind, guess = b.get("acc_base"), b.get("acc_blind"), guesser_floor(m, items)
    if not (_est(acc) and _has_ci(acc)):
        return None
    from_frames = item_correctness(c, "vcot", f, "base", items)
    from_blind = item_correctness(c, "vcot", f, "blind", items)
    shared = sorted(set(from_frames) & set(from_blind))
    if shared:
        lead = paired_difference([from_frames[k] for k in shared], [from_blind[k] for k in shared],
                                 **(boot or Bootstrap()).of(c.settings("vcot")))
        over_blind: bool | None = verdict(lead.to_dict()) == "supported"
    else:
        over_blind = acc["ci_low"] > blind["value"] if _est(blind) else None
    over_guess = acc["ci_low"] > guess["value"] if _est(guess) else None
    if over_blind is None and over_guess is None:
        return None
    return over_blind is not False and over_guess is not False


def pair_findings(pair: Pair, boot: Bootstrap = Bootstrap()) -> dict:
    """Everything the verdicts of one pair are made of, from both runs' predictions and metrics:

        {"pair", "subject", "video", "role" (the subject's: "image" | "shuffled"),
         "refused": {task: [(setting, subject's, video's), ...]}  evaluations made differently: no contrast,
         "missing": [task, ...]   a task one of the two runs was not evaluated on,
         "f1": {F: {"temporal": gain_finding | None, "overall": ...}},
         "f2": {F: {"temporal": drop_finding | None, "overall": ...}},
         "f3": iraven_finding | None,
         "f3_rule_groups": {group: iraven_finding(pair, group)} for the groups with shared puzzles,
         "neither_reads": {F: {"temporal": bool | None, "overall": ...}},
         "video_sees_change": {F: {"temporal": bool | None, "overall": ...}}}

    `neither_reads` is True when both runs' text-only accuracy is within their blind floor
    (`reads_infills` False for both), None when either is unknown; `video_sees_change` is `sees_change`
    of the video run. Every contrast resamples with `boot`."""
    s, v = pair
    out = {"pair": pair.name, "subject": s.name, "video": v.name, "role": s.role, "refused": {}, "missing": [],
           "f1": {}, "f2": {}, "f3": None, "f3_rule_groups": {}, "neither_reads": {}, "video_sees_change": {}}
    for task, key, finding in (("vcot", "f1", gain_finding), ("shuffle", "f2", drop_finding)):
        if task not in s.metrics or task not in v.metrics:
            out["missing"].append(task)
            continue
        differ = evaluation_differences(s.settings(task), v.settings(task))
        if differ:
            out["refused"][task] = differ
            continue
        frames = sorted({int(k[1:]) for c in (s, v) for k in fkeys(c.task_metrics(task))}
                        | {r["frames"] for c in (s, v) for r in c.predictions(task)
                           if isinstance(r.get("frames"), int)})
        out[key] = {f: {items: finding(pair, f, items, boot) for items in ("temporal", "overall")} for f in frames}
    for f in sorted(set(out["f1"]) | set(out["f2"])):
        out["neither_reads"][f], out["video_sees_change"][f] = {}, {}
        for items in ("temporal", "overall"):
            reads = [reads_infills(c, f, items) for c in (s, v)]
            out["neither_reads"][f][items] = None if None in reads else not any(reads)
            out["video_sees_change"][f][items] = sees_change(v, f, items, boot)
    if "iraven" not in s.metrics or "iraven" not in v.metrics:
        out["missing"].append("iraven")
    elif differ := iraven_differences(s.settings("iraven"), v.settings("iraven")):
        out["refused"]["iraven"] = differ
    else:
        out["f3"] = iraven_finding(pair, boot=boot)
        out["f3_rule_groups"] = {g: found for g in GROUPS if (found := iraven_finding(pair, g, boot))}
    return out


# --- verdicts --------------------------------------------------------------------------------------
FINDINGS = {
    "F1": ("vcot", "vCoT infills help the {s} run more: gain({s}) - gain(video) > 0"),
    "F2": ("shuffle", "the {s} run loses more with another video's infills: drop_text({s}) - drop_text(video) > 0"),
    "F3": ("iraven", "the video run is more accurate on I-RAVEN: acc(video) - acc({s}) > 0"),
}
"""Each finding: the task it is measured on and the paper's direction (the contrast's positive side)."""


ALPHA = 0.05
"""The level of every verdict: 95% intervals, and paired tests below 0.05."""


def verdict(contrast: dict | None) -> str:
    """`supported` when the CI of a contrast (oriented so that the paper's direction is positive) lies
    above 0, `contradicted` when it lies below 0, `inconclusive` when it holds 0; `not measured` without
    a contrast. A contrast with a paired test (`p_value`: McNemar, or the sign-flip test of a contrast of
    differences) is also `inconclusive` when that test is not below `ALPHA`: with a handful of items
    that differ, all one way, the percentile interval clears 0 while the test does not (4 of 300: the
    interval [+0.3, +2.7] points, p = 0.125); `cleared_by_ci_only` says when that happened."""
    if not (_est(contrast) and _has_ci(contrast)):
        return "not measured"
    if cleared_by_ci_only(contrast):
        return "inconclusive"
    if contrast["ci_low"] > 0:
        return "supported"
    if contrast["ci_high"] < 0:
        return "contradicted"
    return "inconclusive"


def cleared_by_ci_only(contrast: dict | None) -> bool:
    """Whether a contrast's CI excludes 0 while its paired test's p-value is not below `ALPHA`."""
    if not (_est(contrast) and _has_ci(contrast)):
        return False
    p = contrast.get("p_value")
    return isinstance(p, (int, float)) and p >= ALPHA and (contrast["ci_low"] > 0 or contrast["ci_high"] < 0)


def few_items_note(contrast: dict | None) -> str:
    """The note of a verdict `cleared_by_ci_only` made inconclusive ("" otherwise)."""
    if not cleared_by_ci_only(contrast):
        return ""
    return (f"the CI excludes 0 but the paired test does not (p={contrast['p_value']:.2g}): the contrast "
            "rests on too few items that differ")


def verdicts(findings: dict) -> list[dict]:
    """The verdict rows of one pair (`pair_findings`): one per F for F1 and F2, one for F3.

    F1 and F2 are judged on temporal items (all items, said in `items`, when no item carries a kind);
    their `note` says when neither run reads its infills (text-only within the blind floor), since then
    the contrast cannot show implicit reasoning, and when the video run does not answer them from frames
    above the floor (`sees_change`), since then it has no reasoning between frames to show. F3 is `uninformative` when either run's I-RAVEN answers
    sit on one candidate. A finding whose task one run lacks is `not evaluated`, one whose evaluations
    differ `not compared`.

    Each row: {"pair", "subject", "video", "role", "finding", "frames" (None for F3 and when no F was
    compared), "items", "direction", "contrast" (estimate dict or None), "verdict", "note"}."""
    role = findings.get("role") or "image"
    base = {k: findings.get(k) for k in ("pair", "subject", "video")} | {"role": role}
    rows = []
    for name, (task, direction) in FINDINGS.items():
        row = base | {"finding": name, "frames": None, "items": "", "contrast": None,
                      "direction": direction.format(s=role), "note": ""}
        if task in findings.get("missing", []):
            rows.append(row | {"verdict": "not evaluated", "note": f"no `{task}` evaluation of both runs"})
            continue
        if task in findings.get("refused", {}):
            settings = ", ".join(f"`{k}`" for k, _, _ in findings["refused"][task])
            rows.append(row | {"verdict": "not compared", "note": f"the `{task}` evaluations differ in {settings}"})
            continue
        if name == "F3":
            f3 = findings.get("f3")
            unusable = (f3 or {}).get("uninformative") or {}
            if unusable:
                note = "; ".join(f"`{run}`: {why}" for run, why in unusable.items())
                rows.append(row | {"items": "puzzles", "contrast": f3["contrast"], "verdict": "uninformative",
                                   "note": note})
            else:
                contrast = (f3 or {}).get("contrast")
                rows.append(row | {"items": "puzzles", "contrast": contrast, "verdict": verdict(contrast),
                                   "note": few_items_note(contrast)})
            continue
        per_f = findings.get(name.lower()) or {}
        if not per_f:
            rows.append(row | {"verdict": "not measured", "note": "no prediction rows to pair"})
        for f in sorted(per_f):
            items = judged_kind(k for k, v in per_f[f].items() if v)
            found = per_f[f].get(items)
            notes = ([] if items == "temporal" else ["no item is of the temporal kind: all items"] if found
                     else ["no prediction rows to pair at this F"])
            if ((findings.get("neither_reads") or {}).get(f) or {}).get(items):
                notes.append("neither run reads its infills (text-only within the blind floor): "
                             "the contrast is no test of implicit reasoning")
            if ((findings.get("video_sees_change") or {}).get(f) or {}).get(items) is False:
                notes.append("the video run does not answer these items from frames above the floor (its lead "
                             "over its blind accuracy on the same items is not clear of 0, or its base accuracy's "
                             "CI reaches down to the options-only guesser): it "
                             "has not learned to see what happens between frames, so the contrast cannot show "
                             "reasoning between frames")
            contrast = (found or {}).get("contrast")
            if note := few_items_note(contrast):
                notes.insert(0, note)
            rows.append(row | {"frames": f, "items": items, "contrast": contrast, "verdict": verdict(contrast),
                               "note": "; ".join(notes)})
    return rows


def _finding_estimates(findings: dict) -> list[tuple[str, dict]]:
    """(metric name, estimate) of every contrast and component of one pair, for metrics.csv and MLflow."""
    out = []
    for key in ("f1", "f2"):
        for f, per_items in sorted((findings.get(key) or {}).items()):
            for items, found in per_items.items():
                for part, est in (found or {}).items():
                    if _est(est):
                        out.append((f"{key}/{items}/f{f}/{part}", est))
    for part, est in (findings.get("f3") or {}).items():
        if _est(est):
            out.append((f"f3/{part}", est))
    for group, found in (findings.get("f3_rule_groups") or {}).items():
        out += [(f"f3/rule_group/{group}/{part}", est) for part, est in found.items() if _est(est)]
    return out


# --- sections ------------------------------------------------------------------------------------
def findings_section(all_findings: list[dict]) -> list[str]:
    if not all_findings:
        return ["No matched pair of training runs (a run.json with `match.reference.checkpoint`) here: "
                "the findings need an image run and a video run matched in consumption."]
    out = ["Each finding of the paper as a paired contrast (points, bootstrap 95% CI over items), oriented so "
           "that the paper's direction is positive: **supported** when the CI lies above 0, **contradicted** "
           "when it lies below 0, **inconclusive** when it holds 0 or when the paired test over items (p: "
           "McNemar for F3, a sign-flip test for F1 and F2) is not below 0.05, as when a few items that "
           "differ all one way carry the contrast; F3 is **uninformative** when a run's I-RAVEN answers sit on "
           "one candidate. F1 and F2 are judged on temporal items.", ""]
    if any(f.get("role") == "shuffled" for f in all_findings):
        out += ["The shuffled-frames control was not part of the paper: its rows use the paper's direction with "
                "the control in the image run's place, the outcome expected if frame order is what video "
                "training adds.", ""]
    out += ["| pair | finding | F | items | the paper's direction | contrast [CI] | verdict | note |",
            "|---|---|---|---|---|---|---|---|"]
    for found in all_findings:
        for r in verdicts(found):
            frames = "" if r["frames"] is None else r["frames"]
            out.append(f"| {r['pair']} | {r['finding']} | {frames} | {r['items']} | {r['direction']} | "
                       f"{_pts(r['contrast'])} | **{r['verdict']}** | {r['note']} |")
    return out


def vcot_section(ckpts: list[Checkpoint]) -> list[str]:
    rows = [c for c in ckpts if "vcot" in c.metrics]
    if not rows:
        return ["No checkpoint has vCoT results yet."]
    setups = {c.name: evaluated_as(c.settings("vcot")) for c in rows}
    if len(set(setups.values())) == 1:
        setup = [f"Evaluated with {next(iter(setups.values()))}."]
    else:
        setup = ["The checkpoints were evaluated differently: compare their rows with care.", "",
                 *[f"- `{name}`: {how}" for name, how in setups.items()]]
    generated = [c for c in rows if c.settings("vcot").get("scoring") == "generate"]
    strict = "" if not generated else (" With generate scoring the accuracies are strict: an answer that no rule "
                                       "or judge maps to an option counts wrong (failure rates and random-fill "
                                       "accuracy below).")
    out = [*setup, "", "Accuracy in % with bootstrap 95% CI per item kind (overall, static, temporal); gain = vCoT "
           "- base in points (paired bootstrap CI, exact McNemar p). Conditions: base = frames then question; "
           "caption = each frame followed by its caption; vCoT = frames interleaved with what happened between; "
           f"blind = question and options only; text-only = the infills without frames; reversed = the frames in "
           f"reverse order.{strict}", "", frames_line(rows, "vcot"), "",
           "| model | run | F | items | n | base | caption | vCoT | blind | text-only | reversed | gain |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, _, fk, items, b in _kind_blocks(rows, "vcot"):
        accs = " | ".join(_pct(b.get(f"acc_{cond}")) for cond in
                          ("base", "caption", "vcot", "blind", "text_only", "reversed"))
        out.append(f"| {c.name} | {c.role} | {fk[1:]} | {items} | {b.get('n_items', '')} | {accs} | "
                   f"{_pts(b.get('gain'))} |")
    return out + ["", *floors_lines(rows), *reversed_lines(rows), *extraction_lines(rows, "vcot")]


def _finding_rows(per_f: dict, cells) -> list[str]:
    """Table rows `| F | items | n | cells(estimate)... |` of a finding per F (temporal items, then overall),
    and a closing blank line."""
    out = []
    for f, per in sorted(per_f.items()):
        for items in ("temporal", "overall"):
            if est := per.get(items):
                out.append(f"| {f} | {items} | {est['n']} | " + " | ".join(cells(est)) + " |")
    return out + [""]


def _kind_blocks(rows: list[Checkpoint], task: str):
    """(checkpoint, its metrics of `task`, "f<F>", item kind, block) for every recorded block, in the report's
    order: checkpoint, F, then overall / static / temporal."""
    for c in rows:
        m = c.task_metrics(task)
        for fk in fkeys(m):
            for items in ITEM_KINDS:
                b = block_of(m, fk, items)
                if b:
                    yield c, m, fk, items, b


def judged_kind(kinds) -> str:
    """The item kind a finding (and validity check (b)) is judged on, of the kinds a metric was split
    into: temporal items when there are any, else all items."""
    return "temporal" if "temporal" in kinds else "overall"


def guesser_floor(m: dict, items: str) -> dict | None:
    g = (m.get("floors") or {}).get("guesser")
    if not isinstance(g, dict):
        return None
    g = g if items == "overall" else (g.get("by_kind") or {}).get(items)
    return g if _est(g) else None


CHANCE_NOTE = "[^chance]: Chance is 20% with five options; the floors above are the ones to beat."


def floors_lines(rows: list[Checkpoint]) -> list[str]:
    """The floors table: each checkpoint's blind and text-only accuracy and the best options-only guesser,
    and a line per checkpoint that does not read its infills."""
    out = ["**Floors**: what can be scored without the video. blind = the checkpoint answering from question and "
           "options alone; options-only guesser = the best of rules that read only the options (a fixed position, "
           "the odd one out, the longest or shortest option, an answer-frequency prior), the accuracy the option "
           "sets give away. A model reads its infills when its text-only accuracy is above its blind "
           "accuracy.[^chance]",
           "", "| model | run | F | items | blind | text-only | text-only - blind | best options-only guesser |",
           "|---|---|---|---|---|---|---|---|"]
    flagged: dict[str, list[str]] = {}
    for c, m, fk, items, b in _kind_blocks(rows, "vcot"):
        g = guesser_floor(m, items)
        guess = f"{g.get('best', '')} {_pct(g)}" if g else ""
        out.append(f"| {c.name} | {c.role} | {fk[1:]} | {items} | {_pct(b.get('acc_blind'))} | "
                   f"{_pct(b.get('acc_text_only'))} | {_pts(b.get('text_only_gain'))} | {guess} |")
        # infills say what changes: only items about change (or unkinded ones) can show reading
        if items != "static" and reads_infills(c, int(fk[1:]), items) is False:
            flagged.setdefault(c.name, []).append(f"F={fk[1:]} {items}")
    out.append("")
    for name, where in flagged.items():
        out.append(f"- `{name}` does not read its infills: a gain it lacks is not evidence of implicit reasoning "
                   f"(its text-only CI reaches down to its blind accuracy at {', '.join(where)}).")
    return out + (["", CHANCE_NOTE, ""] if flagged else [CHANCE_NOTE, ""])


def reversed_lines(rows: list[Checkpoint]) -> list[str]:
    """The reversed-answer pick rates (temporal items that have one), when any checkpoint recorded them."""
    table = []
    for c in rows:
        m = c.task_metrics("vcot")
        for fk in fkeys(m):
            b = block_of(m, fk)
            if not (_est(b.get("reversed_pick_base")) or _est(b.get("reversed_pick_reversed"))):
                b = block_of(m, fk, "temporal")
            pb, pr = b.get("reversed_pick_base"), b.get("reversed_pick_reversed")
            if _est(pb) or _est(pr):
                n = (pb if _est(pb) else pr).get("n", "")
                table.append(f"| {c.name} | {c.role} | {fk[1:]} | {n} | {_pct(pb)} | {_pct(pr)} |")
    if not table:
        return []
    return ["**Reversed frames**: on temporal items, the share of answers that pick the option describing the clip "
            "played backwards, with the frames in order (base) and reversed. A model that follows frame order picks it "
            "rarely in order and often reversed; equal rates mean it ignores the order of the frames.", "",
            "| model | run | F | n | picks the reversed answer: frames in order | frames reversed |",
            "|---|---|---|---|---|---|", *table, ""]


def extraction_lines(rows: list[Checkpoint], task: str) -> list[str]:
    """Per condition: failure rate, strict and random-fill accuracy of generate scoring; what loglik has instead."""
    out = []
    generated = [c for c in rows if c.settings(task).get("scoring") == "generate"]
    loglik = [c for c in rows if c not in generated]
    if generated:
        out += ["Answer extraction (generate scoring), in % with bootstrap 95% CI: **failed**, the share of answers "
                "that no rule or judge could map to one option (an answer naming two letters is a failure); "
                "**strict** accuracy counts them wrong; **random-fill** accuracy scores each as 1/5, the expected "
                "accuracy of a uniform guess, which is what evaluations that fill an unmatched answer with a random "
                "option (VLMEvalKit) report on average: put that column beside such tables.", "",
                "| model | run | F | condition | failed | strict | random-fill |", "|---|---|---|---|---|---|---|"]
        for c in generated:
            m = c.task_metrics(task)
            for fk in fkeys(m):
                b = m[fk]
                for cond in (k.removeprefix("acc_") for k in b if k.startswith("acc_")):
                    failed = b.get(f"failed_{cond}")
                    count = f" ({failed['count']}/{failed['n']})" if _est(failed) and "count" in failed else ""
                    out.append(f"| {c.name} | {c.role} | {fk[1:]} | {_SHOWN.get(cond, cond)} | {_pct(failed)}{count} | "
                               f"{_pct(b.get(f'acc_{cond}'))} | {_pct(b.get(f'random_fill_{cond}'))} |")
        out.append("")
    if loglik:
        names = ", ".join(f"`{c.name}`" for c in loglik)
        out += [f"{names}: loglik scoring picks an option for every prompt, so there are no extraction failures: "
                "strict and random-fill accuracy are both the accuracy in the table above.", ""]
    return out


def _refusal(task: str, pair: Pair, differ: list) -> list[str]:
    s, v = pair
    what = {"vcot": "the vCoT gains", "shuffle": "the text-shuffle drops", "iraven": "the I-RAVEN accuracies"}[task]
    return [f"**No contrast of {what}**: the two checkpoints' `{task}` evaluations differ in "
            + ", ".join(f"`{k}`" for k, _, _ in differ)
            + ", so a contrast would mix the training difference with the evaluation difference. Evaluate both "
            "with the same settings to contrast them.", "",
            f"| setting | {s.name} | {v.name} |", "|---|---|---|",
            *[f"| {k} | {_show(a, k)} | {_show(b, k)} |" for k, a, b in differ], ""]


def _audit(pair: Pair) -> list[str]:
    """The scale-match record of the matched run and what each run consumed."""
    s, v = pair
    matched = pair.matched
    other = v if matched is s else s
    m = matched.match
    out = []
    if all(isinstance(m.get(k), (int, float)) for k in ("target", "achieved", "rel_error")):
        out += [f"{matched.name} was stopped at {other.name}'s consumption of **{m.get('unit')}** "
                f"(target {m['target']:,}, achieved {m['achieved']:,}, relative error {m['rel_error']:.2%}).", ""]
    out += [f"| consumed | {s.name} | {v.name} | ratio |", "|---|---|---|---|"]
    for u in AUDIT:
        a, b = s.consumed.get(u), v.consumed.get(u)
        ratio = f"{a / b:.3f}" if a is not None and b else ""
        out.append(f"| {u} | {a if a is not None else ''} | {b if b is not None else ''} | {ratio} |")
    return out + [""]


def other_weights_lines(ckpts: list[Checkpoint]) -> list[str]:
    """A warning naming the results left out because the checkpoint's weights changed after they were made
    (a run trained again in place, or still training): shown, they would pass for the new weights'."""
    stale = [c for c in ckpts if c.other_weights]
    if not stale:
        return []
    return ["**Left out: results of other weights** (the directory's weights changed after they were evaluated; "
            "evaluate again with `python -m evalsuite all`): "
            + "; ".join(f"`{c.name}` ({', '.join(c.other_weights)})" for c in stale), ""]


def unresolved_lines(ckpts: list[Checkpoint]) -> list[str]:
    """A warning naming the runs whose matched reference is not among the checkpoints here, or is ambiguous:
    they are in no pair, and a pair the reader expects is missing rather than wrong."""
    missing = unresolved_references(ckpts)
    if not missing:
        return []
    return ["**Matched runs without their reference here** (in no pair; give the report a directory that holds "
            "both runs, or the reference's path is ambiguous: name it by an absolute path in `--match_to`): "
            + "; ".join(f"`{c.name}` (matched to `{ref}`)" for c, ref in missing), ""]


def pairs_section(pairs: list[Pair], all_findings: list[dict] | None = None) -> tuple[list[str], dict]:
    """The per-pair detail (audit and the three contrasts with their parts) and the MLflow metrics of the
    contrasts, `contrast/<subject>_vs_<video>/<f1|f2>/<items>/f<F>/<part>/<value|ci_low|ci_high>` and
    `.../f3/<part>/...`."""
    if not pairs:
        return ["No matched pair of training runs (a run.json with `match.reference.checkpoint`) here."], {}
    all_findings = all_findings if all_findings is not None else [pair_findings(p) for p in pairs]
    out, metrics = [], {}
    for pair, found in zip(pairs, all_findings):
        s, v = pair
        lab = pair.label
        out += [f"### {s.name} ({ROLES.get(s.role, s.role)}) vs {v.name} (video run)", ""]
        if pair.control:
            out += [f"`{s.name}` was trained on the video run's clips with their frames shuffled: it sees as many "
                    "frames of the same videos, in no order. It takes the image run's place in the three contrasts; "
                    "the frames-only accuracy difference on temporal items says whether frame order in training "
                    "taught anything.", ""]
        out += _audit(pair)
        if "vcot" in found["refused"]:
            out += _refusal("vcot", pair, found["refused"]["vcot"])
        elif found["f1"]:
            out += ["F1, vCoT gain (points, paired over items) and gain / headroom = gain / (1 - base accuracy):", "",
                    f"| F | items | n | gain {lab} | gain/headroom {lab} | gain video | gain/headroom video | "
                    f"gain({lab}) - gain(video) | base accuracy video - {lab} |",
                    "|---|---|---|---|---|---|---|---|---|"]
            out += _finding_rows(found["f1"], lambda g: [
                _pts(g["subject_gain"]), _ratio(g["subject_relative"]), _pts(g["video_gain"]),
                _ratio(g["video_relative"]), _pts(g["contrast"]), _pts(g["base_contrast"])])
        if "shuffle" in found["refused"]:
            out += _refusal("shuffle", pair, found["refused"]["shuffle"])
        elif found["f2"]:
            out += ["F2, drop under the text perturbation (another video's infills; vCoT - text, points, paired):", "",
                    f"| F | items | n | drop_text {lab} | drop_text video | drop_text({lab}) - drop_text(video) |",
                    "|---|---|---|---|---|---|"]
            out += _finding_rows(found["f2"], lambda d: [_pts(d["subject_drop"]), _pts(d["video_drop"]),
                                                         _pts(d["contrast"])])
        if "iraven" in found["refused"]:
            out += _refusal("iraven", pair, found["refused"]["iraven"])
        elif found["f3"]:
            f3 = found["f3"]
            out += ["F3, I-RAVEN accuracy (%, paired over puzzles):", "",
                    f"| n puzzles | acc {lab} | acc video | acc(video) - acc({lab}) |", "|---|---|---|---|",
                    f"| {f3['n']} | {_pct(f3['subject_acc'])} | {_pct(f3['video_acc'])} | {_pts(f3['contrast'])} |", ""]
            out += [f"`{run}` is uninformative on I-RAVEN ({why}): its accuracy is that candidate's share of targets."
                    for run, why in f3["uninformative"].items()]
            out += [""] if f3["uninformative"] else []
        key = f"contrast/{s.name}_vs_{v.name}"
        for name, est in _finding_estimates(found):
            metrics |= {f"{key}/{name}/{k}": float(est[k]) for k in ("value", "ci_low", "ci_high") if k in est}
    return out, metrics


SHUFFLE_PERTURBATIONS = ("text", "visual", "words", "order")


def shuffle_section(ckpts: list[Checkpoint]) -> list[str]:
    rows = [c for c in ckpts if "shuffle" in c.metrics]
    if not rows:
        return ["No checkpoint has perturbation results yet."]
    out = ["Accuracy under each perturbation of the vCoT input and the drop from vCoT (points, paired CI, "
           "McNemar p), per item kind. text = another video's infills; visual = another video's frames; words = "
           "the words of each infill shuffled; order = the video's own infills in a shuffled order.", "",
           frames_line(rows, "shuffle"), "",
           "| model | run | F | items | vCoT | text | drop text | visual | drop visual | words | drop words | "
           "order | drop order |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, _, fk, items, b in _kind_blocks(rows, "shuffle"):
        cells = [_pct(b.get("acc_vcot"))]
        for p in SHUFFLE_PERTURBATIONS:
            cells += [_pct(b.get(f"acc_{p}")), _pts(b.get(f"drop_{p}"))]
        out.append(f"| {c.name} | {c.role} | {fk[1:]} | {items} | " + " | ".join(cells) + " |")
    return out


def iraven_section(ckpts: list[Checkpoint], all_findings: list[dict] = ()) -> list[str]:
    rows = [c for c in ckpts if "iraven" in c.metrics]
    if not rows:
        return ["No checkpoint has I-RAVEN results yet."]
    configs = sorted({k for c in rows for k in (c.task_metrics("iraven").get("per_config") or {})})
    out = ["Accuracy in % (95% CI) per configuration; chance is 12.5%. Position bias = share of answers "
           "on the most often predicted candidate (12.5% when unbiased). A run whose answers sit on one candidate "
           "(`informative: false`) is shown as uninformative: its accuracy would be that candidate's share of "
           "targets.", "",
           "| " + " | ".join(["model", "run", "average", *configs, "position bias"]) + " |",
           "|---|---|---|" + "---|" * len(configs) + "---|"]
    for c in rows:
        m = c.task_metrics("iraven")
        per = m.get("per_config") or {}
        bias = m.get("position_bias")
        value = bias.get("value") if isinstance(bias, dict) else bias
        bias_s = f"{100 * value:.1f}" if isinstance(value, (int, float)) else ""
        if m.get("informative") is False:
            cells = [f"uninformative ({uninformative_reason(m)})", *["" for _ in configs]]
        else:
            cells = [_pct(m.get("acc")), *(_pct(per.get(k)) for k in configs)]
        out.append("| " + " | ".join([c.name, c.role, *cells, bias_s]) + " |")
    return out + ["", *iraven_rule_lines(rows), *iraven_rule_contrast_lines(all_findings)]


def iraven_rule_lines(rows: list[Checkpoint]) -> list[str]:
    """Accuracy per rule group and per active rule type of each checkpoint (`by_rule_group`, `by_rule_type`)."""
    recorded = [c for c in rows if c.task_metrics("iraven").get("by_rule_group")]
    if not recorded:
        return ["No I-RAVEN evaluation here recorded accuracy by rule group (evaluated before it was)."]
    out = ["**By rule group** (from each puzzle's `meta_matrix`; a rule is active when it is not Constant): "
           "spatial = an active rule on Number or Position, abstract = an active rule on Type, Size or Color, "
           "abstract only = abstract with no active spatial rule. Spatial and abstract overlap; spatial and "
           "abstract only do not. Accuracy in % (95% CI), overall and by the active rule type within the group "
           "(a puzzle counts for every type it has there).", "",
           "| rule group | model | run | n | accuracy | " + " | ".join(ACTIVE_RULES) + " |",
           "|---|---|---|---|---|" + "---|" * len(ACTIVE_RULES)]
    for group in GROUPS:
        for c in recorded:
            m = c.task_metrics("iraven")
            est = m["by_rule_group"].get(group)
            if not _est(est):
                continue
            by_type = (m.get("by_rule_type") or {}).get(group) or {}
            cells = ([f"uninformative ({uninformative_reason(m)})", *["" for _ in ACTIVE_RULES]]
                     if m.get("informative") is False else [_pct(est), *(_pct(by_type.get(t)) for t in ACTIVE_RULES)])
            out.append("| " + " | ".join([group.replace("_", " "), c.name, c.role, str(est.get("n", "")), *cells]) + " |")
    return out + [""]


def iraven_rule_contrast_lines(all_findings: list[dict]) -> list[str]:
    """Per matched pair and rule group: both accuracies and acc(video) - acc(other run), paired over puzzles."""
    found = [f for f in all_findings if f.get("f3_rule_groups")]
    if not found:
        return []
    out = ["**By rule group, paired** (acc(video) - acc(other run), points, bootstrap 95% CI over the group's "
           "puzzles, exact McNemar p):", "",
           "| pair | rule group | n puzzles | acc other run | acc video | acc(video) - acc(other run) |",
           "|---|---|---|---|---|---|"]
    notes = []
    for f in found:
        for group, g in f["f3_rule_groups"].items():
            out.append(f"| {f['pair']} ({f['role']} vs video) | {group.replace('_', ' ')} | {g['n']} | "
                       f"{_pct(g['subject_acc'])} | {_pct(g['video_acc'])} | {_pts(g['contrast'])} |")
        notes += [f"`{run}` is uninformative on I-RAVEN ({why}): its accuracy in each group is that candidate's "
                  "share of the group's targets." for run, why in (f.get("f3") or {}).get("uninformative", {}).items()]
    return out + ["", *notes, *([""] if notes else [])]


def metrics_csv(ckpts: list[Checkpoint], all_findings: list[dict] = ()) -> str:
    """Every estimate of every task and checkpoint, one row each, then every contrast of every pair
    (checkpoint `<subject> vs <video>`, kind `<role> vs video`, task `findings`)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["checkpoint", "kind", "task", "metric", "value", "ci_low", "ci_high", "n", "p_value"])

    def walk(prefix: str, node, c: Checkpoint, task: str):
        if isinstance(node, dict) and "value" in node and not isinstance(node["value"], dict):
            if _est(node):
                w.writerow([c.name, c.role, task, prefix, node["value"], node.get("ci_low", ""),
                            node.get("ci_high", ""), node.get("n", ""), node.get("p_value", "")])
        elif isinstance(node, dict):
            for k, v in sorted(node.items()):
                walk(f"{prefix}/{k}" if prefix else k, v, c, task)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            w.writerow([c.name, c.role, task, prefix, node, "", "", "", ""])

    for c in ckpts:
        for task in c.metrics:
            walk("", c.task_metrics(task), c, task)
    for found in all_findings:
        for name, est in _finding_estimates(found):
            w.writerow([found["pair"], f"{found['role']} vs video", "findings", name, est["value"],
                        est.get("ci_low", ""), est.get("ci_high", ""), est.get("n", ""), est.get("p_value", "")])
    return buf.getvalue()


def _listed(entries: list[dict]) -> str:
    shown = "; ".join(f"{e.get('id')}: {e.get('reason')}" for e in entries[:3])
    return shown + ("; ..." if len(entries) > 3 else "")


def caveats_section(ckpts: list[Checkpoint]) -> list[str]:
    """What was not evaluated as asked, per checkpoint and task: items that could not be evaluated (the
    benchmark's problems, e.g. missing EgoSchema videos), items that failed, and items whose sequences
    passed the model's context (metrics.json's `context`, `evalsuite.context`)."""
    lines, fits = [], []
    for c in ckpts:
        longest, limit = 0, 0
        for task, m in sorted(c.metrics.items()):
            problems, errors, ctx = m.get("problems") or [], m.get("errors") or [], m.get("context") or {}
            if problems:
                lines.append(f"- `{c.name}` {task}: {len(problems)} item(s) could not be evaluated "
                             f"({_listed(problems)}).")
            if errors:
                lines.append(f"- `{c.name}` {task}: {len(errors)} item(s) failed ({_listed(errors)}).")
            if said := overrun(ctx):
                lines.append(f"- `{c.name}` {task}: {said}.")
            if ctx.get("items"):
                longest, limit = max(longest, ctx.get("longest", 0)), ctx.get("limit", 0)
        if longest and limit:
            fits.append(f"`{c.name}` {longest:,} of {limit:,}")
    if not lines:
        lines.append("None: every item was evaluated, and every sequence fit its model's context.")
    if fits:
        lines += ["", "Longest sequence run, in tokens, of the model's context in positions: " + ", ".join(fits) + "."]
    return lines


def write_report(ckpt_dir: str | os.PathLike, track: bool = True, *, n_boot: int | None = None,
                 seed: int | None = None) -> Path:
    """Write report.md, report/*.png and report/metrics.csv under `ckpt_dir`; returns report.md. `n_boot` and
    `seed` resample every paired contrast (None: the evaluations' own, see `Bootstrap`)."""
    from evalsuite.report.plots import plot_findings, plot_gains, plot_iraven, plot_shuffle

    boot = Bootstrap(n_boot, seed)
    root = Path(ckpt_dir).resolve()
    discovered = discover(root)
    ckpts = [c for c in discovered if c.metrics]  # one whose every result is of other weights is only named below
    pairs = matched_pairs(ckpts)
    all_findings = [pair_findings(p, boot) for p in pairs]
    rows = [r for found in all_findings for r in verdicts(found)]
    pair_lines, contrast_metrics = pairs_section(pairs, all_findings)
    fig_dir = root / "report"
    fig_dir.mkdir(exist_ok=True)
    figures = [f for f in (plot_findings(rows, fig_dir), plot_gains(ckpts, fig_dir), plot_shuffle(ckpts, fig_dir),
                           plot_iraven(ckpts, fig_dir)) if f]
    lines = [f"# Evaluation report: {root.name}", "",
             f"{len(ckpts)} checkpoint(s): "
             + ", ".join(f"`{c.name}` ({ROLES.get(c.role, c.role)})" for c in ckpts), "",
             *other_weights_lines(discovered),
             "## Findings: the paper's three claims", "", *findings_section(all_findings), "",
             "## vCoT on long-form video QA", "", *vcot_section(ckpts), "",
             "## Image run vs video run, scale-matched", "", *unresolved_lines(ckpts), *pair_lines, "",
             "## Robustness to perturbations", "", *shuffle_section(ckpts), "",
             "## I-RAVEN transfer", "", *iraven_section(ckpts, all_findings), "",
             "## Not evaluated as asked", "", *caveats_section(ckpts), "",
             "## Figures", "", *[f"![{f.stem}](report/{f.name})" for f in figures], "",
             "Every metric and contrast with its CI: [report/metrics.csv](report/metrics.csv)."]
    atomic_write_text(fig_dir / "metrics.csv", metrics_csv(ckpts, all_findings))
    out = root / "report.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    if track and ckpts:
        from evalsuite.tracking import log_comparison

        try:
            log_comparison(root, out, fig_dir, contrast_metrics, ckpts, verdicts=rows)
        except Exception as e:  # noqa: BLE001 - the report is written; a store that is down must not hide it
            print(f"[mlflow] the comparison was not logged ({type(e).__name__}: {e}); {out} is written; "
                  "rerun `python -m evalsuite report` once the store answers", file=sys.stderr, flush=True)
    return out


def summary_text(report: Path) -> str:
    """The verdicts and the vCoT section, for printing at the end of `all` and of `make demo`."""
    text = report.read_text()
    start = text.find("## Findings")
    start = start if start >= 0 else text.index("## vCoT")
    end = text.find("## Image run vs video run")
    return text[start:end if end >= 0 else None].strip()
