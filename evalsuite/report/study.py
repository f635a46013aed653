"""The study report: `<study_dir>/report.md`, `<study_dir>/report/metrics.csv` and `report/study_*.png`.

Written by `write_study_report`, which the study runner calls once every run of a study (arms x budgets
x seeds) is trained and evaluated, and again after each rerun; read by the researcher. It reads the
runner's list of runs (`study.json`'s `runs`: arm, recipe, budget, unit, seed, run_dir, status) and,
in every run directory, what training and `python -m evalsuite all` wrote: `run.json` and
`eval/<task>/{metrics.json, predictions.jsonl}`. Nothing is trained or evaluated here.

Per budget and arm, across the arm's seeds (`stats.hierarchical_bootstrap`: seeds and items resampled),
each beside its per-seed values:

* `vcot_gain`: vCoT - base accuracy of the `vcot` task, per F and item kind (overall, static, temporal);
* `text_drop`: the `shuffle` task's drop_text, vCoT - text (another video's infills; a loss is positive),
  per F and item kind;
* `iraven_acc`: I-RAVEN accuracy, overall and per rule group when the rows carry `rule_groups`.

And, when the evaluations have a `blind` condition, validity check (b) across seeds: on temporal items
(all items when they have no kinds), `frames_acc` (accuracy from frames, the `base` condition) and
`frames_over_blind` (per item, right from frames - right blind). An arm answers from frames above its
floors at a budget when the CI of `frames_over_blind` lies above 0, its paired sign-flip test over items
(the items' seed-averaged leads) has p below 0.05, as every contrast's verdict must, and the CI of
`frames_acc` lies above the options-only guesser's accuracy (`floors.guesser` in the evaluations' metrics). This is the study's
counterpart of the evaluation report's `sees_change`, with the seeds pooled and the blind floor taken
paired, item by item, with its own uncertainty (`sees_change` compares one run's CI with its blind
accuracy's value): a lead whose CI holds 0 is not above the floor, even when the accuracy's CI clears
the mean blind accuracy.

Per budget, the contrasts `image - video` and `video - shuffled` of every metric, paired over the items
both arms answered. An arm's role comes from its runs' run.json (`kind`, and `frame_order: shuffled`
for the shuffled-frames control), as `evalsuite.report.evaluation.Checkpoint.role` reads it, never from its name;
an arm of another role (or of mixed roles) is listed, not contrasted. Contrasts are refused between arms
whose evaluations were made differently (`evalsuite.report.evaluation.compared_settings`, `iraven_compared`).

"What the study found" is computed from the contrasts' CIs with `evalsuite.report.evaluation.verdict`, each
contrast oriented so that the paper's direction is positive (the shuffled-frames control takes the
image run's place, as in the evaluation report): F1 on the vCoT gain, F2 on the text drop (temporal
items when the items have kinds), F3 on I-RAVEN accuracy, "uninformative" when a run's I-RAVEN answers
sit on one candidate (its summary's `informative: false`). A run that is not finished, or lacks an
evaluation, is listed and counted as missing: its arm's estimates at that budget rest on fewer seeds. Only
a run whose status is `done` (`FINISHED`) is read at all.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from data_recipes.files import atomic_write_text
from evalsuite.report.evaluation import (ALPHA, ROLES, Bootstrap, Checkpoint, compared_settings, iraven_compared,
                                         few_items_note, guesser_floor, item_correctness, judged_kind,
                                         uninformative_reason, verdict)
from evalsuite.benchmarks.iraven.groups import GROUPS, in_group
from evalsuite.stats import SeedEstimate, hierarchical_bootstrap, sign_flip_p
from train.run_record import RunRecordError

RUN_FIELDS = ("arm", "recipe", "budget", "unit", "seed", "run_dir", "status")
"""The fields of every entry of study.json's `runs` (written by the study runner)."""
FINISHED = "done"
"""The runner's status of a run trained and evaluated under the study's evaluation flags; a run in any
other (pending, partial, trained, failed) is missing, whatever its directory holds."""
METRICS = {"vcot_gain": ("vcot", ("vcot", "base")), "text_drop": ("shuffle", ("vcot", "text")),
           "iraven_acc": ("iraven", None)}
"""metric -> (evaluation task, (condition, condition subtracted)); None: plain accuracy."""
VALIDITY = {"frames_acc": ("vcot", ("base",)), "frames_over_blind": ("vcot", ("base", "blind"))}
"""Validity check (b)'s read-outs: metric -> (task, (condition,) accuracy | (condition, condition subtracted))."""
READ_OUTS = METRICS | VALIDITY
"""Every metric an arm is scored on, by name."""
SEES_CHANGE, NOT_ABOVE = "above its floors", "not above its floors"
"""The validity rows' verdicts."""
LABELS = {"vcot_gain": "vCoT gain (vCoT - base)", "text_drop": "text-shuffle drop (vCoT - other video's infills)",
          "iraven_acc": "I-RAVEN accuracy"}
ITEM_KINDS = ("overall", "static", "temporal")
CONTRASTS = (("image", "video"), ("video", "shuffled"))
"""The contrasts made at each budget, as (role, role subtracted)."""
FINDINGS = {"vcot_gain": ("F1", "vCoT infills help the {s} run more"),
            "text_drop": ("F2", "the {s} run loses more with another video's infills"),
            "iraven_acc": ("F3", "the video run is more accurate on I-RAVEN")}
"""Per metric, the paper's finding it tests and its claim, `{s}` the role in the image run's place."""
PAPER_SIGN = {("image", "video"): {"vcot_gain": 1, "text_drop": 1, "iraven_acc": -1},
              ("video", "shuffled"): {"vcot_gain": -1, "text_drop": -1, "iraven_acc": 1}}
"""The sign the paper's direction gives each contrast (the control in the image run's place)."""
VERDICTS = ("supported", "contradicted", "inconclusive")
"""The verdicts the paragraph always counts; "uninformative" and "not compared" only when they occur."""


@dataclass
class StudyRun:
    """One entry of study.json's `runs`, with its checkpoint when it is finished and has evaluations."""
    arm: str
    recipe: str
    budget: float
    unit: str
    seed: int
    run_dir: Path
    status: str
    ckpt: Checkpoint | None = None

    @property
    def label(self) -> str:
        return f"{self.arm} @ {_num(self.budget)} {self.unit}, seed {self.seed}"


@dataclass
class Row:
    """One row of metrics.csv: an arm's estimate across seeds, or a contrast of two arms, at one budget."""
    arm: str
    role: str
    budget: float
    unit: str
    metric: str
    frames: int | None
    items: str
    est: SeedEstimate | None
    per_seed: dict = field(default_factory=dict)
    direction: str = ""
    verdict: str = ""
    note: str = ""


def _num(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,g}"


def load_runs(study_dir: Path, runs: list[dict]) -> list[StudyRun]:
    """study.json's `runs` as `StudyRun`s; a relative run_dir is taken from the study directory when it
    exists there, else from the working directory."""
    where = study_dir / "study.json"
    if not isinstance(runs, list):
        raise ValueError(f"{where}: `runs` must be a list of runs, got {type(runs).__name__}")
    out = []
    for i, r in enumerate(runs):
        if not isinstance(r, dict):
            raise ValueError(f"{where}: runs[{i}] must be a mapping with {', '.join(RUN_FIELDS)}")
        if missing := [k for k in RUN_FIELDS if k not in r]:
            raise ValueError(f"{where}: runs[{i}] lacks {', '.join(missing)} (expected {', '.join(RUN_FIELDS)})")
        budget = r["budget"]
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
            raise ValueError(f"{where}: runs[{i}].budget must be a positive number, got {budget!r}")
        if isinstance(r["seed"], bool) or not isinstance(r["seed"], int):
            raise ValueError(f"{where}: runs[{i}].seed must be an integer, got {r['seed']!r}")
        run_dir = Path(r["run_dir"])
        if not run_dir.is_absolute() and (study_dir / run_dir).exists():
            run_dir = study_dir / run_dir
        run = StudyRun(str(r["arm"]), str(r["recipe"]), budget, str(r["unit"]), r["seed"], run_dir, str(r["status"]))
        if run.status == FINISHED and (run_dir / "eval").is_dir():
            try:
                run.ckpt = Checkpoint(run_dir.parent, run_dir)
            except (json.JSONDecodeError, RunRecordError) as e:
                raise ValueError(f"{run_dir}: corrupt run.json or eval/<task>/metrics.json ({e})") from None
        out.append(run)
    return out


def missing_tasks(run: StudyRun, wanted: list[str] | None = None) -> list[str]:
    """The tasks of `METRICS` (those the study asked for: `wanted`, default all) this run has no finished
    evaluation of (`eval/<task>/metrics.json`), all of them when the run is not finished."""
    tasks = [t for t in dict.fromkeys(t for t, _ in METRICS.values()) if wanted is None or t in wanted]
    return [t for t in tasks if run.ckpt is None or t not in run.ckpt.metrics]


def missing_what(run: StudyRun, wanted: list[str] | None = None) -> str:
    if run.status != FINISHED:
        return f"the run is not finished (status {run.status}): none of its results are used"
    return "no evaluation of " + ", ".join(missing_tasks(run, wanted))


def study_tasks(spec) -> list[str] | None:
    """The tasks the study evaluates (its eval flags' `--tasks`), None (all) without a spec."""
    flags = getattr(spec, "eval", None)
    if flags is None:
        return None
    from evalsuite.study.run import split_tasks

    return split_tasks(tuple(flags))[0]


# --- per-item scores -------------------------------------------------------------------------------
def item_scores(c: Checkpoint, metric: str, f: int | None, items: str) -> dict[str, int]:
    """{item: score} of one run: the paired difference of the metric's two conditions (-1, 0, 1) over the
    items with both, or I-RAVEN correctness on the puzzles of one rule group ("overall": all)."""
    task, conditions = READ_OUTS[metric]
    if conditions is None:
        right = item_correctness(c, task)
        if items != "overall":
            grouped = {r["item"] for r in c.predictions(task) if in_group(r, items)}
            right = {k: v for k, v in right.items() if k in grouped}
        return right
    if len(conditions) == 1:
        return item_correctness(c, task, f, conditions[0], items)
    a, b = (item_correctness(c, task, f, cond, items) for cond in conditions)
    return {k: a[k] - b[k] for k in a.keys() & b.keys()}


def _splits(runs: list[StudyRun], metric: str) -> list[tuple[int | None, str]]:
    """(F, items) of a metric over the runs' prediction rows: every F recorded, overall then each kind
    (vCoT, shuffle) or rule group (I-RAVEN) the rows carry."""
    task, conditions = READ_OUTS[metric]
    rows = [r for run in runs if run.ckpt and task in run.ckpt.metrics for r in run.ckpt.predictions(task)]
    if conditions is None:
        return [(None, "overall")] + [(None, g) for g in GROUPS if any(in_group(r, g) for r in rows)]
    frames = sorted({r["frames"] for r in rows if isinstance(r.get("frames"), int)})
    kinds = {r.get("kind") for r in rows}
    return [(f, k) for f in frames for k in ITEM_KINDS if k == "overall" or k in kinds]


def seed_matrix(runs: list[StudyRun], metric: str, f: int | None, items: str) -> tuple[list[str], dict[int, list]]:
    """(items every seed scored, {seed: its scores on them}) of one arm at one budget."""
    per_seed = {r.seed: item_scores(r.ckpt, metric, f, items) for r in runs
                if r.ckpt and READ_OUTS[metric][0] in r.ckpt.metrics}
    per_seed = {s: v for s, v in per_seed.items() if v}
    if not per_seed:
        return [], {}
    keys = sorted(set.intersection(*(set(v) for v in per_seed.values())))
    return keys, {s: [v[k] for k in keys] for s, v in sorted(per_seed.items())}


# --- arms ------------------------------------------------------------------------------------------
def arm_roles(runs: list[StudyRun]) -> dict[str, str]:
    """Each arm's role from its evaluated runs' run.json ("image", "video", "shuffled", ...); "unknown"
    when none has one, "mixed: ..." when they disagree."""
    roles: dict[str, set] = {}
    for r in runs:
        roles.setdefault(r.arm, set())
        if r.ckpt is not None and r.ckpt.run is not None:
            roles[r.arm].add(r.ckpt.role)
    return {a: next(iter(s)) if len(s) == 1 else "mixed: " + ", ".join(sorted(s)) if s else "unknown"
            for a, s in roles.items()}


def arm_order(spec, runs: list[StudyRun]) -> list[str]:
    """The spec's arm order (its `arms`: names, or objects with `.name`), then arms only the runs name."""
    named = [str(getattr(a, "name", a)) for a in (getattr(spec, "arms", None) or [])]
    return list(dict.fromkeys([*named, *(r.arm for r in runs)]))


def _evaluated_as(runs: list[StudyRun], task: str) -> set[str]:
    """The distinct settings (those two evaluations must share to be contrasted) of the runs' `task`."""
    def key(s: dict) -> dict:
        return iraven_compared(s) if task == "iraven" else compared_settings(s)
    return {json.dumps(key(r.ckpt.settings(task)), sort_keys=True, default=str)
            for r in runs if r.ckpt and task in r.ckpt.metrics}


# --- estimates -------------------------------------------------------------------------------------
def arm_rows(arm: str, role: str, runs: list[StudyRun], boot: dict) -> list[Row]:
    """Every metric of one arm at one budget, across its seeds."""
    out = []
    budget, unit = runs[0].budget, runs[0].unit
    for metric in METRICS:
        for f, items in _splits(runs, metric):
            keys, scores = seed_matrix(runs, metric, f, items)
            if keys:
                est = hierarchical_bootstrap([list(scores.values())], **boot)
                out.append(Row(arm, role, budget, unit, metric, f, items, est, dict(zip(scores, est.per_seed[0])),
                               note=_uninformative_runs(runs) if metric == "iraven_acc" else ""))
    return out


def validity_rows(arm: str, role: str, runs: list[StudyRun], boot: dict) -> list[Row]:
    """Validity check (b) of one arm at one budget across its seeds, per F: `frames_acc` then
    `frames_over_blind`, whose verdict says whether the arm answers from frames above its floors (see the
    module's docstring); nothing when the evaluations have no `blind` condition."""
    out = []
    budget, unit = runs[0].budget, runs[0].unit
    splits = _splits(runs, "frames_over_blind")
    kind = judged_kind({k for _, k in splits})
    for f, items in (s for s in splits if s[1] == kind):
        keys, diff = seed_matrix(runs, "frames_over_blind", f, items)
        if not keys:
            continue
        # accuracy from frames on the same items and seeds as the lead over blind
        scored = {r.seed: item_scores(r.ckpt, "frames_acc", f, items) for r in runs if r.ckpt and r.seed in diff}
        acc = {seed: [scored[seed][k] for k in keys] for seed in diff}
        acc_est = hierarchical_bootstrap([list(acc.values())], **boot)
        diff_est = hierarchical_bootstrap([list(diff.values())], **boot)
        floors = [g["value"] for r in runs if r.ckpt and (g := guesser_floor(r.ckpt.task_metrics("vcot"), items))]
        guess = max(floors) if floors else None
        # the paired test a verdict must pass too, as every contrast's: the sign-flip test of the items'
        # seed-averaged leads (a CI above 0 carried by a few items that all differ one way is not enough)
        p = sign_flip_p([sum(col) / len(col) for col in zip(*diff.values())], seed=boot.get("seed", 0))
        above = diff_est.ci_low > 0 and p < ALPHA and (guess is None or acc_est.ci_low > guess)
        note = "options-only guesser " + (f"{100 * guess:.1f}%" if guess is not None else "not recorded")
        out += [Row(arm, role, budget, unit, "frames_acc", f, items, acc_est, dict(zip(acc, acc_est.per_seed[0])),
                    note=note),
                Row(arm, role, budget, unit, "frames_over_blind", f, items, diff_est,
                    dict(zip(diff, diff_est.per_seed[0])), verdict=SEES_CHANGE if above else NOT_ABOVE,
                    note=f"p={p:.2g}")]
    return out


def contrast_rows(a: str, b: str, roles: tuple[str, str], runs_a: list[StudyRun], runs_b: list[StudyRun],
                  boot: dict) -> list[Row]:
    """`a - b` of every metric at one budget: paired over the items both arms scored when they share
    any, else each arm on its own items; refused when the arms' evaluations differ."""
    out = []
    budget, unit = runs_a[0].budget, runs_a[0].unit
    signs = PAPER_SIGN[roles]
    for metric in METRICS:
        task = METRICS[metric][0]
        finding, claim = FINDINGS[metric]
        sign = signs[metric]
        direction = (f"{finding}: {claim.format(s=roles[0] if roles[0] != 'video' else roles[1])}: "
                     f"{roles[0]} - {roles[1]} {'>' if sign > 0 else '<'} 0")
        base = dict(arm=f"{a} - {b}", role=f"{roles[0]} - {roles[1]}", budget=budget, unit=unit, metric=metric,
                    direction=direction)
        if len(_evaluated_as(runs_a + runs_b, task)) > 1:
            out.append(Row(**base, frames=None, items="", est=None, verdict="not compared",
                           note=f"the arms' `{task}` evaluations were made with different settings"))
            continue
        for f, items in sorted(set(_splits(runs_a, metric)) & set(_splits(runs_b, metric)),
                               key=lambda s: (s[0] or 0, ITEM_KINDS.index(s[1]) if s[1] in ITEM_KINDS else 9, s[1])):
            (ka, sa), (kb, sb) = seed_matrix(runs_a, metric, f, items), seed_matrix(runs_b, metric, f, items)
            if not (ka and kb):
                continue
            shared = sorted(set(ka) & set(kb))
            if shared:
                pos_a, pos_b = {k: i for i, k in enumerate(ka)}, {k: i for i, k in enumerate(kb)}
                sa = {s: [v[pos_a[k]] for k in shared] for s, v in sa.items()}
                sb = {s: [v[pos_b[k]] for k in shared] for s, v in sb.items()}
            est = hierarchical_bootstrap([list(sa.values()), list(sb.values())], weights=(1, -1),
                                         paired=bool(shared), **boot)
            mean_a = dict(zip(sa, est.per_seed[0]))
            mean_b = dict(zip(sb, est.per_seed[1]))
            per_seed = {s: mean_a[s] - mean_b[s] for s in mean_a if s in mean_b}
            # paired: the sign-flip test of the items' seed-averaged differences, which a verdict must pass too
            p = None
            if shared:
                item_a = [sum(col) / len(col) for col in zip(*sa.values())]
                item_b = [sum(col) / len(col) for col in zip(*sb.values())]
                p = sign_flip_p([x - y for x, y in zip(item_a, item_b)], seed=boot.get("seed", 0))
            unusable = _uninformative_runs(runs_a + runs_b) if metric == "iraven_acc" else ""
            oriented = _oriented(est, sign, p)
            out.append(Row(**base, frames=f, items=items, est=est, per_seed=per_seed,
                           note=unusable or few_items_note(oriented),
                           verdict="uninformative" if unusable else verdict(oriented)))
    return out


def _uninformative_runs(runs: list[StudyRun]) -> str:
    """The runs whose I-RAVEN answers sit on one candidate (`informative: false`), as a note; "" when none:
    their accuracy is that candidate's share of targets, so no contrast of it is a verdict."""
    return "; ".join(f"{r.label}: {uninformative_reason(r.ckpt.task_metrics('iraven'))}" for r in runs
                     if r.ckpt and r.ckpt.task_metrics("iraven").get("informative") is False)


def _oriented(est: SeedEstimate, sign: int, p_value: float | None = None) -> dict:
    """The estimate as a dict with the paper's direction positive (what `report.verdict` judges), with the
    paired test's p-value when there is one."""
    lo, hi = sign * est.ci_low, sign * est.ci_high
    out = {"value": sign * est.value, "ci_low": min(lo, hi), "ci_high": max(lo, hi)}
    return out | ({"p_value": p_value} if p_value is not None else {})


def _boot_settings(runs: list[StudyRun], n_boot: int | None, seed: int) -> dict:
    """n_boot: the one asked for, else the largest the evaluations recorded, else `DEFAULT_N_BOOT` (the
    evaluation report's rule, `evalsuite.report.evaluation.Bootstrap`); `seed` as given."""
    return Bootstrap(n_boot, seed).of(*(r.ckpt.settings(t) for r in runs if r.ckpt for t in r.ckpt.metrics))


def study_rows(spec, runs: list[StudyRun], boot: dict) -> tuple[list[Row], list[Row], dict[str, str]]:
    """(arm rows, contrast rows, arm roles) at every budget."""
    roles = arm_roles(runs)
    arms = arm_order(spec, runs)
    arm_out, contrast_out = [], []
    for budget in sorted({r.budget for r in runs}):
        at = {a: [r for r in runs if r.arm == a and r.budget == budget and r.ckpt] for a in arms}
        for a in arms:
            if at[a]:
                arm_out += arm_rows(a, roles[a], at[a], boot) + validity_rows(a, roles[a], at[a], boot)
        for pair in CONTRASTS:
            for a in (x for x in arms if roles[x] == pair[0] and at[x]):
                for b in (x for x in arms if roles[x] == pair[1] and at[x]):
                    contrast_out += contrast_rows(a, b, pair, at[a], at[b], boot)
    return arm_out, contrast_out, roles


# --- outputs ---------------------------------------------------------------------------------------
CSV_COLUMNS = ("arm", "role", "budget", "unit", "metric", "frames", "items", "value", "ci_low", "ci_high",
               "n_items", "n_seeds", "per_seed", "paired", "direction", "verdict", "note")


def metrics_csv(rows: list[Row]) -> str:
    """Every estimate and contrast, one row each: `per_seed` is `seed=value` pairs separated by `;`
    (for a contrast, the difference of the two arms' values at each seed both have), `n_seeds` the seeds
    of each side separated by `;`."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in rows:
        e = r.est
        nums = [e.value, e.ci_low, e.ci_high, e.n, ";".join(map(str, e.n_seeds))] if e else ["", "", "", "", ""]
        w.writerow([r.arm, r.role, r.budget, r.unit, r.metric, "" if r.frames is None else r.frames, r.items, *nums,
                    ";".join(f"{s}={v!r}" for s, v in r.per_seed.items()),
                    "" if e is None or len(e.n_seeds) < 2 else e.paired, r.direction, r.verdict, r.note])
    return buf.getvalue()


def _pts(e: SeedEstimate | None, scale: float = 100, fmt: str = "+.1f") -> str:
    if e is None:
        return ""
    return f"{scale * e.value:{fmt}} [{scale * e.ci_low:{fmt}}, {scale * e.ci_high:{fmt}}]"


def _accuracy(r: Row) -> bool:
    """Whether the row is an accuracy (printed in %), not a gain, drop or contrast (signed points)."""
    return r.metric in ("iraven_acc", "frames_acc") and " - " not in r.role


def _fmt(r: Row) -> str:
    return _pts(r.est, fmt=".1f") if _accuracy(r) else _pts(r.est)


def _seeds(r: Row) -> str:
    sign = "" if _accuracy(r) else "+"
    return ", ".join(f"s{s}: {100 * v:{sign}.1f}" for s, v in r.per_seed.items())


def _where(r: Row) -> str:
    return ("" if r.frames is None else f"F={r.frames}, ") + r.items


def judged(rows: list[Row]) -> list[Row]:
    """The contrast rows a finding is judged on: `judged_kind`'s items at every F; I-RAVEN on all puzzles;
    a refused contrast as it is."""
    kinds: dict[tuple, set] = {}
    for r in rows:
        kinds.setdefault((r.arm, r.budget, r.metric, r.frames), set()).add(r.items)
    return [r for r in rows if r.est is None or (r.metric == "iraven_acc" and r.items == "overall")
            or (r.metric != "iraven_acc" and r.items == judged_kind(kinds[(r.arm, r.budget, r.metric, r.frames)]))]


def found_lines(contrasts: list[Row], missing: list[StudyRun], n_runs: int) -> list[str]:
    """The "what the study found" paragraph: per contrast and finding, the budgets at each verdict."""
    rows = judged(contrasts)
    if not rows:
        return ["No contrast could be made: the study needs an image arm and a video arm (or a video arm and "
                "a shuffled-frames arm) with evaluated runs at the same budget."]
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.arm, r.metric, r.frames, r.items), []).append(r)
    counts = {v: sum(r.verdict == v for r in rows) for v in ("supported", "contradicted", "inconclusive",
                                                            "uninformative", "not compared")}
    out = [f"{len(rows)} judged contrasts (arm pair x finding x F x budget): "
           + ", ".join(f"**{n} {v}**" for v, n in counts.items() if n or v in VERDICTS) + ". "
           "A contrast is supported only when its CI (seeds and items resampled) excludes 0 in the paper's "
           "direction and, for arms scored on the same items, a sign-flip test over the items' seed-averaged "
           "differences gives p below 0.05; contradicted when both hold the other way, else inconclusive; an "
           "I-RAVEN contrast is "
           "uninformative when a run's answers sit on one candidate.", ""]
    for (arm, metric, f, items), rs in groups.items():
        by_verdict: dict[str, list[str]] = {}
        for r in sorted(rs, key=lambda r: r.budget):
            by_verdict.setdefault(r.verdict, []).append(_num(r.budget))
        where = f" (F={f}, {items} items)" if f is not None else f" ({items})" if items else ""
        verdicts = "; ".join(f"{v} at {', '.join(bs)}" for v, bs in by_verdict.items())
        out.append(f"- `{arm}`, {rs[0].direction}{where}: {verdicts} {rs[0].unit}.")
    if missing:
        out += ["", f"{len(missing)} of {n_runs} runs are missing or unevaluated (listed above): the estimates "
                "at their budgets rest on fewer seeds."]
    return out


def _table(rows: list[Row], contrast: bool) -> list[str]:
    if contrast:
        head = ["| contrast | budget | metric | where | value [95% CI], points | per seed | paired | verdict | note |",
                "|---|---|---|---|---|---|---|---|---|"]
        body = [f"| {r.arm} ({r.role}) | {_num(r.budget)} {r.unit} | {r.metric} | {_where(r)} | {_fmt(r)} | "
                f"{_seeds(r)} | {'' if r.est is None else 'yes' if r.est.paired else 'no'} | {r.verdict} | "
                f"{r.note} |" for r in rows]
    else:
        head = ["| arm | run | budget | metric | where | n items | seeds | value [95% CI] | per seed | note |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        body = [f"| {r.arm} | {r.role} | {_num(r.budget)} {r.unit} | {r.metric} | {_where(r)} | {r.est.n} | "
                f"{r.est.n_seeds[0]} | {_fmt(r)} | {_seeds(r)} | {r.note} |" for r in rows]
    return head + body


def validity_lines(rows: list[Row]) -> list[str]:
    """The validity section: per arm and budget, accuracy from frames and its lead over blind, across seeds."""
    acc = {(r.arm, r.budget, r.frames): r for r in rows if r.metric == "frames_acc"}
    out = ["Validity check (b), with the seeds pooled: does the arm answer from frames above its floors? "
           "Accuracy from frames (%) and per item, right from frames - right blind (points), mean over seeds "
           "with the hierarchical-bootstrap CI and the paired sign-flip test's p over items. **" + SEES_CHANGE +
           "** when the second CI lies above 0, its p is below " + f"{ALPHA:g}" + " and the first CI lies above "
           "the options-only guesser; otherwise the arm's contrasts compare reading the infills, not reasoning "
           "between frames.", "",
           "| arm | run | budget | where | from frames, % | frames - blind, points | per seed (frames - blind) | "
           "floor | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r.metric == "frames_over_blind"):
        a = acc[r.arm, r.budget, r.frames]
        out.append(f"| {r.arm} | {r.role} | {_num(r.budget)} {r.unit} | {_where(r)} | {_fmt(a)} | {_fmt(r)}, "
                   f"{r.note} | {_seeds(r)} | {a.note} | {r.verdict} |")
    return out


def validity_found(rows: list[Row]) -> list[str]:
    """The "what the study found" lines of validity check (b): per arm, the budgets at each verdict."""
    by_arm: dict[tuple, dict[str, list[str]]] = {}
    for r in sorted((r for r in rows if r.metric == "frames_over_blind"), key=lambda r: r.budget):
        by_arm.setdefault((r.arm, r.role, r.unit, _where(r)), {}).setdefault(r.verdict, []).append(_num(r.budget))
    return [f"- validity (b), `{arm}` ({role} run) answering from frames ({where} items): "
            + "; ".join(f"{v} at {', '.join(bs)}" for v, bs in verdicts.items()) + f" {unit}."
            for (arm, role, unit, where), verdicts in by_arm.items()]


def _runs_lines(runs: list[StudyRun], roles: dict[str, str], arms: list[str], missing: list[StudyRun],
                wanted: list[str] | None = None) -> list[str]:
    out = ["| arm | recipe | role (from run.json) | budgets | seeds | runs evaluated |", "|---|---|---|---|---|---|"]
    for a in arms:
        mine = [r for r in runs if r.arm == a]
        out.append(f"| {a} | {', '.join(sorted({r.recipe for r in mine}))} | {ROLES.get(roles[a], roles[a])} | "
                   f"{', '.join(_num(b) for b in sorted({r.budget for r in mine}))} | "
                   f"{', '.join(map(str, sorted({r.seed for r in mine})))} | "
                   f"{sum(r not in missing for r in mine)} of {len(mine)} |")
    if missing:
        out += ["", f"**Missing: {len(missing)} of {len(runs)} runs** are not finished or lack an evaluation:", "",
                "| run | status | run dir | missing |", "|---|---|---|---|"]
        out += [f"| {r.label} | {r.status} | `{r.run_dir}` | {missing_what(r, wanted)} |" for r in missing]
    return out


def _figures(arm_rows: list[Row], contrasts: list[Row], roles: dict[str, str], fig_dir: Path) -> list[Path]:
    from evalsuite.report.plots import KIND_COLOURS, plot_vs_budget

    unit = next((r.unit for r in arm_rows), "")
    figures = []
    for metric in METRICS:
        panels: dict[str, dict[str, list]] = {}
        for r in (r for r in arm_rows if r.metric == metric):
            panels.setdefault(_where(r), {}).setdefault(f"{r.arm} ({r.role})", []).append((r.budget, r.est))
        colours = {f"{a} ({role})": KIND_COLOURS.get(role) for a, role in roles.items()}
        figures.append(plot_vs_budget(panels, unit, f"{LABELS[metric]} ({'%' if metric == 'iraven_acc' else 'points'},"
                                      " 95% CI)", f"{LABELS[metric]} against budget, per arm",
                                      fig_dir / f"study_{metric}.png", colours,
                                      hline=12.5 if metric == "iraven_acc" else 0.0))
    panels = {}
    for r in (r for r in judged(contrasts) if r.est is not None):
        series = panels.setdefault(f"{r.metric}, {_where(r)}", {})
        series.setdefault(f"{r.arm} ({r.role})", []).append((r.budget, r.est))
    figures.append(plot_vs_budget(panels, unit, "contrast in points (95% CI)", "Contrasts per budget",
                                  fig_dir / "study_contrasts.png", hline=0.0))
    return [f for f in figures if f]


def write_study_report(study_dir: Path, spec, runs: list[dict], *, n_boot: int | None = None,
                       seed: int = 0) -> Path:
    """Write `report/metrics.csv`, `report/study_*.png` and, last, `report.md` under `study_dir`, each
    atomically; return report.md. `spec` gives the study's `name` and arm order (may be None); `runs` is
    study.json's list. `n_boot` defaults to the evaluations' recorded one, `seed` seeds every bootstrap."""
    study_dir = Path(study_dir)
    loaded = load_runs(study_dir, runs)
    boot = _boot_settings(loaded, n_boot, seed)
    arm_out, contrast_out, roles = study_rows(spec, loaded, boot)
    validity = [r for r in arm_out if r.metric in VALIDITY]
    estimates = [r for r in arm_out if r.metric not in VALIDITY]
    wanted = study_tasks(spec)
    missing = [r for r in loaded if missing_tasks(r, wanted)]
    arms = arm_order(spec, loaded)
    fig_dir = study_dir / "report"
    fig_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(fig_dir / "metrics.csv", metrics_csv(arm_out + contrast_out))
    figures = _figures(estimates, contrast_out, roles, fig_dir)
    name = getattr(spec, "name", None) or study_dir.name
    lines = [f"# Study report: {name}", "",
             f"{len(loaded)} runs in {len(arms)} arms x {len({r.budget for r in loaded})} budgets; "
             f"{len(loaded) - len(missing)} evaluated, {len(missing)} missing.", "",
             *_runs_lines(loaded, roles, arms, missing, wanted), "",
             "## What the study found", "", *found_lines(contrast_out, missing, len(loaded)),
             *(["", *validity_found(validity), "", "## Validity check (b): answering from frames", "",
                *validity_lines(validity)] if validity else []), "",
             "## Contrasts per budget", "",
             f"`a - b` of the arms' means over seeds, in points; CI: hierarchical bootstrap ({boot['n_boot']} "
             "replicates, seeds resampled per arm, items resampled within each seed, the same items for both arms "
             "when paired); per seed: the difference of the two arms' values at each seed both have.", "",
             *_table(contrast_out, contrast=True), "",
             "## Per arm and budget", "",
             "Mean over seeds with its hierarchical-bootstrap CI, beside each seed's own value: gains and drops in "
             "points, I-RAVEN accuracy in % (chance 12.5%).", "", *_table(estimates, contrast=False), "",
             "## Figures", "", *[f"![{f.stem}](report/{f.name})" for f in figures], "",
             "Every number with its CI and per-seed values: [report/metrics.csv](report/metrics.csv)."]
    out = study_dir / "report.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
