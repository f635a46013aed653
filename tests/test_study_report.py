"""Statistics across seeds (`stats.hierarchical_bootstrap`) and the study report (`evalsuite.report.study`)
from hand-made study directories: runs whose eval/ outputs are written with the runner's own writer
(`TaskOutputs`) in the layout `python -m evalsuite all` leaves, with correctness patterns chosen so that
every number can be computed by hand (no models run)."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from evalsuite.outputs import TaskOutputs
from evalsuite.report.evaluation import verdict
from evalsuite.stats import SeedEstimate, accuracy_ci, hierarchical_bootstrap, paired_difference
from evalsuite.report.study import _oriented, write_study_report

N_ITEMS, N_PUZZLES = 20, 16
ITEMS = [f"synthetic-eval-test-s0-{i:07d}" for i in range(N_ITEMS)]
KIND = {item: "temporal" if i < 10 else "static" for i, item in enumerate(ITEMS)}
PUZZLES = [f"center_single/RAVEN_{i}_test" for i in range(N_PUZZLES)]
VCOT = {"task": "vcot", "benchmark": "synthetic", "limit": N_ITEMS, "frames": [5], "seed": 0, "protocol": "custom",
        "scoring": "loglik", "loglik_norm": "mean", "infills": "oracle", "n_boot": 200, "item_set": "20@abc"}
SHUFFLE = VCOT | {"task": "shuffle"}
IRAVEN = {"task": "iraven", "data": "generated", "generator_seed": 2026, "per_config": 16, "layout": "candidates",
          "protocol": "custom", "scoring": "loglik", "seed": 0, "n_boot": 200}


def right(n: int, count: int = N_ITEMS) -> list[int]:
    """The first `n` of `count` items answered right."""
    return [1] * n + [0] * (count - n)


# Per role and seed, which items each condition gets right (the first n). image: base 4, vCoT 14 / 12 ->
# gains 0.5 / 0.4 overall, 0.6 / 0.6 on the temporal items 0-9; video: no gain (seed 1: +1 item); the
# shuffled-frames control like the image run. Shuffle task: vCoT 10 right for all; text 10 right for image
# and control (drop 0), 2 for video (drop 0.4). I-RAVEN: image 2 / 16, video 3 / 16, control 4 / 16.
PATTERNS = {
    "image": [{"base": 4, "vcot": 14, "s_vcot": 10, "text": 10, "iraven": 2},
              {"base": 4, "vcot": 12, "s_vcot": 10, "text": 10, "iraven": 2}],
    "video": [{"base": 4, "vcot": 4, "s_vcot": 10, "text": 2, "iraven": 3},
              {"base": 4, "vcot": 5, "s_vcot": 10, "text": 2, "iraven": 3}],
    "shuffled": [{"base": 4, "vcot": 14, "s_vcot": 10, "text": 10, "iraven": 4},
                 {"base": 4, "vcot": 14, "s_vcot": 10, "text": 10, "iraven": 4}],
}
RUN_JSON = {"image": {"kind": "image", "frame_order": "ordered", "recipe": "pics"},
            "video": {"kind": "video", "frame_order": "ordered", "recipe": "clips"},
            "shuffled": {"kind": "video", "frame_order": "shuffled", "recipe": "clips_mixed"}}
# arm names say nothing about the role: the report must read it from run.json
ARMS = {"arm_a": "image", "arm_b": "video", "arm_c": "shuffled"}


def _write_task(run_dir, task: str, settings: dict, rows: list[dict], summary: dict | None = None) -> None:
    """Rows and metrics.json as the runner writes them (prepare, append, merge, write_metrics)."""
    out = TaskOutputs(run_dir, task)
    out.prepare(settings)
    out.append(rows)
    merged = out.merge([r["key"] for r in rows])
    out.write_metrics({"task": task, "settings": settings, "n_rows": len(merged),
                       "metrics": {"n_items": len(rows)} | (summary or {}), "errors": [], "problems": []})


def _vcot_rows(conditions: dict[str, int], prefix: str = "") -> list[dict]:
    rows = []
    for i, item in enumerate(ITEMS):
        for cond, n in conditions.items():
            ok = right(n)[i]
            rows.append({"key": f"{item}|f5|{cond}", "item": item, "video": item, "frames": 5, "condition": cond,
                         "kind": KIND[item], "answer": 3, "pred": 3 if ok else 1, "correct": bool(ok)})
    return rows


def _iraven_rows(n: int) -> list[dict]:
    return [{"key": p, "item": p, "config": "center_single", "answer": 2, "pred": 2 if ok else 5, "correct": bool(ok),
             "rule_groups": {"spatial": ["Progression"]} if i < 8 else {"abstract": ["Arithmetic"]}}
            for i, (p, ok) in enumerate(zip(PUZZLES, right(n, N_PUZZLES)))]


def make_run(root, arm: str, role: str, budget: int, seed: int, vcot_settings: dict = VCOT,
             tasks=("vcot", "shuffle", "iraven"), iraven_summary: dict | None = None) -> dict:
    run_dir = root / "runs" / f"{arm}_b{budget}_s{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(RUN_JSON[role] | {"seed": seed}))
    p = PATTERNS[role][seed]
    if "vcot" in tasks:
        _write_task(run_dir, "vcot", vcot_settings, _vcot_rows({"base": p["base"], "vcot": p["vcot"]}))
    if "shuffle" in tasks:
        _write_task(run_dir, "shuffle", SHUFFLE, _vcot_rows({"vcot": p["s_vcot"], "text": p["text"]}))
    if "iraven" in tasks:
        _write_task(run_dir, "iraven", IRAVEN, _iraven_rows(p["iraven"]), iraven_summary)
    return {"arm": arm, "recipe": RUN_JSON[role]["recipe"], "budget": budget, "unit": "samples", "seed": seed,
            "run_dir": str(run_dir.relative_to(root)), "status": "done"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """3 arms x 2 budgets x 2 seeds; arm_b's seed 1 at budget 200 is still running (no eval), and arm_c's seed
    1 at budget 200 was evaluated without I-RAVEN."""
    root = tmp_path_factory.mktemp("study")
    runs = []
    for budget in (100, 200):
        for arm, role in ARMS.items():
            for seed in (0, 1):
                if (arm, budget, seed) == ("arm_b", 200, 1):
                    runs.append({"arm": arm, "recipe": "clips", "budget": budget, "unit": "samples", "seed": seed,
                                 "run_dir": "runs/arm_b_b200_s1", "status": "pending"})
                elif (arm, budget, seed) == ("arm_c", 200, 1):
                    runs.append(make_run(root, arm, role, budget, seed, tasks=("vcot", "shuffle")))
                else:
                    runs.append(make_run(root, arm, role, budget, seed))
    spec = SimpleNamespace(name="micro", arms=[SimpleNamespace(name=a) for a in ("arm_c", "arm_b", "arm_a")])
    report = write_study_report(root, spec, runs, n_boot=300)
    with open(root / "report" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return root, report, rows, spec, runs


def _row(rows, arm, budget, metric, frames="5", items="overall"):
    found = [r for r in rows if r["arm"] == arm and r["budget"] == str(budget) and r["metric"] == metric
             and r["frames"] == frames and r["items"] == items]
    assert len(found) == 1, (arm, budget, metric, frames, items, found)
    return found[0]


# --- hierarchical bootstrap ------------------------------------------------------------------------
def test_one_seed_is_the_item_bootstrap():
    rng = np.random.default_rng(3)
    x = (rng.random(300) < 0.4).astype(int)
    h = hierarchical_bootstrap([[x]], n_boot=2000, seed=0)
    a = accuracy_ci(x, n_boot=2000, seed=0)
    assert h.value == pytest.approx(a.value)
    assert (h.ci_high - h.ci_low) == pytest.approx(a.ci_high - a.ci_low, rel=0.1)
    assert h.n_seeds == (1,) and h.per_seed == ((pytest.approx(x.mean()),),) and h.n == 300


def test_identical_seeds_keep_the_item_uncertainty():
    """Seeds answer the same items: three identical seeds are no more certain than one (the item draw is
    shared by the seeds, not averaged over independent draws)."""
    rng = np.random.default_rng(4)
    x = (rng.random(200) < 0.5).astype(int)
    one = hierarchical_bootstrap([[x]], n_boot=2000, seed=1)
    three = hierarchical_bootstrap([[x, x, x]], n_boot=2000, seed=1)
    assert (three.ci_high - three.ci_low) == pytest.approx(one.ci_high - one.ci_low, rel=0.1)


def test_seeds_that_disagree_widen_the_interval():
    rng = np.random.default_rng(5)
    seeds = [(rng.random(200) < p).astype(int) for p in (0.2, 0.5, 0.8)]
    h = hierarchical_bootstrap([seeds], n_boot=2000, seed=0)
    pooled = accuracy_ci(np.concatenate(seeds), n_boot=2000, seed=0)
    assert h.value == pytest.approx(pooled.value)
    assert (h.ci_high - h.ci_low) > 3 * (pooled.ci_high - pooled.ci_low)
    assert h.per_seed[0] == tuple(pytest.approx(s.mean()) for s in seeds)


def test_a_null_contrast_covers_zero_in_most_simulated_studies():
    """Two arms drawn from the same process (seed effects, item difficulty shared by everything): the
    95% CI of their difference holds 0 in nearly every simulated study."""
    covered = 0
    for k in range(12):
        rng = np.random.default_rng(100 + k)
        difficulty = rng.normal(0, 1.0, 150)

        def arm():
            return [(rng.random(150) < 1 / (1 + np.exp(-(difficulty + rng.normal(0, 0.3))))).astype(int)
                    for _ in range(3)]
        e = hierarchical_bootstrap([arm(), arm()], weights=(1, -1), n_boot=1000, seed=k)
        covered += e.ci_low <= 0 <= e.ci_high
    assert covered >= 10


def test_paired_contrast_of_identical_arms_is_exactly_zero_and_unpaired_is_not():
    """Arms of identical seeds: pairing cancels every item draw. Seeds that differ are resampled per arm
    (separate training runs), so their spread stays in the interval even then."""
    x = [right(12), right(12)]
    paired = hierarchical_bootstrap([x, x], weights=(1, -1), n_boot=500, seed=0)
    assert (paired.value, paired.ci_low, paired.ci_high) == (0.0, 0.0, 0.0)
    assert paired.per_seed == ((0.6, 0.6), (0.6, 0.6))
    spread = [right(12), right(9)]
    seeds = hierarchical_bootstrap([spread, spread], weights=(1, -1), n_boot=500, seed=0)
    assert seeds.value == 0.0 and seeds.ci_low < 0 < seeds.ci_high
    unpaired = hierarchical_bootstrap([x, x], weights=(1, -1), paired=False, n_boot=500, seed=0)
    assert unpaired.value == 0.0 and unpaired.ci_low < 0 < unpaired.ci_high and not unpaired.paired


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(6)
    sides = [[(rng.random(80) < 0.5).astype(int) for _ in range(3)] for _ in range(2)]
    a = hierarchical_bootstrap(sides, weights=(1, -1), n_boot=400, seed=7)
    assert a == hierarchical_bootstrap(sides, weights=(1, -1), n_boot=400, seed=7)
    assert a != hierarchical_bootstrap(sides, weights=(1, -1), n_boot=400, seed=8)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="one weight per side"):
        hierarchical_bootstrap([[[1, 0]], [[1, 0]]])
    with pytest.raises(ValueError, match="same items.*sides\\[0\\] has 2, sides\\[1\\] has 3"):
        hierarchical_bootstrap([[[1, 0]], [[1, 0, 1]]], weights=(1, -1))
    with pytest.raises(ValueError, match="rows of different lengths"):
        hierarchical_bootstrap([[[1, 0], [1]]])
    with pytest.raises(ValueError, match="non-empty"):
        hierarchical_bootstrap([[]])


def test_verdict_of_an_oriented_contrast_in_both_directions():
    est = SeedEstimate(value=0.2, ci_low=0.1, ci_high=0.3, n=10)
    assert verdict(_oriented(est, 1)) == "supported"
    assert verdict(_oriented(est, -1)) == "contradicted"
    holds = SeedEstimate(value=0.05, ci_low=-0.1, ci_high=0.2, n=10)
    assert verdict(_oriented(holds, 1)) == verdict(_oriented(holds, -1)) == "inconclusive"
    # a paired contrast also carries its items' sign-flip test: an interval clear of 0 is not enough
    assert verdict(_oriented(est, 1, 0.2)) == verdict(_oriented(est, -1, 0.2)) == "inconclusive"
    assert verdict(_oriented(est, 1, 0.01)) == "supported" and _oriented(est, -1, 0.01)["p_value"] == 0.01


# --- the study report ------------------------------------------------------------------------------
def test_arm_estimates_match_hand_computation(study):
    _, _, rows, *_ = study
    gain = _row(rows, "arm_a", 100, "vcot_gain")
    assert float(gain["value"]) == pytest.approx((0.5 + 0.4) / 2)
    assert gain["per_seed"] == "0=0.5;1=0.4" and gain["n_seeds"] == "2" and gain["n_items"] == "20"
    assert float(gain["ci_low"]) <= 0.45 <= float(gain["ci_high"])
    temporal = _row(rows, "arm_a", 100, "vcot_gain", items="temporal")
    assert float(temporal["value"]) == pytest.approx(0.6) and temporal["n_items"] == "10"
    static = _row(rows, "arm_a", 100, "vcot_gain", items="static")  # items 10-13 (seed 0), 10-11 (seed 1)
    assert static["per_seed"] == "0=0.4;1=0.2"
    drop = _row(rows, "arm_b", 100, "text_drop")
    assert float(drop["value"]) == pytest.approx(0.4) and drop["role"] == "video"
    acc = _row(rows, "arm_c", 100, "iraven_acc", frames="")
    assert float(acc["value"]) == pytest.approx(4 / 16) and acc["role"] == "shuffled"
    spatial = _row(rows, "arm_c", 100, "iraven_acc", frames="", items="spatial")  # puzzles 0-7: 4 right
    assert float(spatial["value"]) == pytest.approx(0.5) and spatial["n_items"] == "8"


def test_missing_run_is_counted_not_dropped(study):
    root, report, rows, *_ = study
    text = report.read_text()
    assert "12 runs in 3 arms x 2 budgets; 10 evaluated, 2 missing." in text
    assert "**Missing: 2 of 12 runs**" in text
    assert "| arm_b @ 200 samples, seed 0" not in text
    assert "| arm_b @ 200 samples, seed 1 | pending | `runs/arm_b_b200_s1` | the run is not finished" in text
    assert "| arm_c @ 200 samples, seed 1 | done |" in text and "| no evaluation of iraven |" in text
    # the arm's estimate at that budget rests on the one seed left
    gain = _row(rows, "arm_b", 200, "vcot_gain")
    assert gain["n_seeds"] == "1" and gain["per_seed"] == "0=0.0"
    acc = _row(rows, "arm_c", 200, "iraven_acc", frames="")
    assert acc["n_seeds"] == "1"
    assert "2 of 12 runs are missing or unevaluated" in text


def test_contrasts_are_paired_oriented_and_judged(study):
    _, report, rows, *_ = study
    iv = _row(rows, "arm_a - arm_b", 100, "vcot_gain", items="temporal")
    assert iv["role"] == "image - video" and iv["paired"] == "True"
    # image temporal gains 0.6, 0.6; video 0.0, 0.1 -> 0.6 - 0.05
    assert float(iv["value"]) == pytest.approx(0.55)
    assert iv["per_seed"] == "0=0.6;1=0.5" and iv["n_seeds"] == "2;2"
    assert iv["verdict"] == "supported"  # F1's direction: gain(image) - gain(video) > 0
    drop = _row(rows, "arm_a - arm_b", 100, "text_drop", items="temporal")
    assert float(drop["value"]) == pytest.approx(-0.8) and drop["verdict"] == "contradicted"
    # video - shuffled: the control in the image run's place, so the paper's direction is negative here
    vs = _row(rows, "arm_b - arm_c", 100, "vcot_gain", items="temporal")
    assert float(vs["value"]) == pytest.approx(-0.55) and vs["verdict"] == "supported"
    vs_drop = _row(rows, "arm_b - arm_c", 100, "text_drop", items="temporal")
    assert float(vs_drop["value"]) == pytest.approx(0.8) and vs_drop["verdict"] == "contradicted"
    f3 = _row(rows, "arm_a - arm_b", 100, "iraven_acc", frames="")
    assert float(f3["value"]) == pytest.approx(-1 / 16) and f3["verdict"] == "inconclusive"
    # no contrast with the arm's name order reversed, and none pairs image with the control
    assert not [r for r in rows if r["arm"] in ("arm_b - arm_a", "arm_a - arm_c", "arm_c - arm_a")]


def test_found_paragraph_is_computed_from_the_cis(study):
    _, report, rows, *_ = study
    text = report.read_text()
    found = text.split("## What the study found")[1].split("## Contrasts per budget")[0]
    judged = [r for r in rows if " - " in r["role"] and (r["metric"] == "iraven_acc" and r["items"] == "overall"
                                                         or r["metric"] != "iraven_acc" and r["items"] == "temporal")]
    counts = {v: sum(r["verdict"] == v for r in judged) for v in ("supported", "contradicted", "inconclusive")}
    assert f"{len(judged)} judged contrasts" in found
    for v, n in counts.items():
        assert f"**{n} {v}**" in found
    assert counts["supported"] == 4 and counts["contradicted"] == 4  # two budgets x (F1 twice, F2 twice)
    assert "`arm_a - arm_b`, F1: vCoT infills help the image run more: image - video > 0 (F=5, temporal items): " \
           "supported at 100, 200 samples." in found


def test_metrics_csv_holds_every_number_and_plots_exist(study):
    root, report, rows, *_ = study
    # per budget: 3 arms x (vcot 3 kinds + shuffle 3 kinds + iraven overall/spatial/abstract/abstract_only)
    # = 30 arm rows, 2 contrasts x 10 = 20 contrast rows
    assert len(rows) == 2 * (30 + 20)
    groups = {r["items"] for r in rows if r["metric"] == "iraven_acc"}
    assert groups == {"overall", "spatial", "abstract", "abstract_only"}  # the evaluation report's groups too
    for r in rows:
        assert float(r["ci_low"]) <= float(r["value"]) + 1e-12 and float(r["value"]) <= float(r["ci_high"]) + 1e-12
    for name in ("study_vcot_gain", "study_text_drop", "study_iraven_acc", "study_contrasts"):
        png = root / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(report/{name}.png)" in report.read_text()
    assert not list((root / "report").glob(".*tmp*"))


def test_rerun_writes_the_same_report(study):
    """A rerun over the same runs (the runner calls it after each resume) rewrites the same files."""
    root, report, _, spec, runs = study
    first, csv_first = report.read_text(), (root / "report" / "metrics.csv").read_text()
    assert write_study_report(root, spec, runs, n_boot=300) == report
    assert (root / "report" / "metrics.csv").read_text() == csv_first
    assert report.read_text() == first


def test_every_estimate_takes_n_boot_and_seed_from_the_report_bootstrap(tmp_path, monkeypatch):
    """The study report's `n_boot` and `seed` reach every bootstrap of it (arms and contrasts); without
    `n_boot`, the evaluations' recorded one (`report.Bootstrap`)."""
    import evalsuite.report.study as study_report

    calls = []

    def recording(*args, **kw):
        calls.append({k: kw.get(k) for k in ("n_boot", "seed")})
        return hierarchical_bootstrap(*args, **kw)

    monkeypatch.setattr(study_report, "hierarchical_bootstrap", recording)
    runs = [make_run(tmp_path, "img", "image", 100, 0), make_run(tmp_path, "vid", "video", 100, 0)]
    write_study_report(tmp_path, None, runs, n_boot=50, seed=4)
    assert len(calls) > 10 and all(c == {"n_boot": 50, "seed": 4} for c in calls)
    calls.clear()
    write_study_report(tmp_path, None, runs)
    assert len(calls) > 10 and all(c == {"n_boot": VCOT["n_boot"], "seed": 0} for c in calls)


@pytest.mark.parametrize("image_side, video_side", [
    ({"infills": "model:gen"}, {}),
    ({"precision": "fp16"}, {"precision": "bf16"}),  # --precision auto on V100 nodes for one arm, A100 for the other
])
def test_differently_evaluated_arms_are_not_contrasted(tmp_path, image_side, video_side):
    runs = [make_run(tmp_path, "img", "image", 100, 0, vcot_settings=VCOT | image_side),
            make_run(tmp_path, "vid", "video", 100, 0, vcot_settings=VCOT | video_side)]
    write_study_report(tmp_path, None, runs, n_boot=100)
    with open(tmp_path / "report" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    gain = [r for r in rows if r["arm"] == "img - vid" and r["metric"] == "vcot_gain"]
    assert len(gain) == 1 and gain[0]["verdict"] == "not compared" and gain[0]["value"] == ""
    assert "# Study report: " + tmp_path.name in (tmp_path / "report.md").read_text()
    # the other tasks were evaluated alike and are contrasted
    assert _row(rows, "img - vid", 100, "text_drop")["verdict"] in ("supported", "contradicted", "inconclusive")


def test_unpaired_when_the_arms_share_no_item(tmp_path):
    runs = [make_run(tmp_path, "img", "image", 100, 0), make_run(tmp_path, "vid", "video", 100, 0)]
    pred = tmp_path / runs[1]["run_dir"] / "eval" / "iraven" / "predictions.jsonl"
    lines = [json.loads(x) for x in pred.read_text().splitlines()]
    pred.write_text("".join(json.dumps(r | {"item": "other/" + r["item"]}) + "\n" for r in lines))
    write_study_report(tmp_path, None, runs, n_boot=100)
    with open(tmp_path / "report" / "metrics.csv") as f:
        f3 = _row(list(csv.DictReader(f)), "img - vid", 100, "iraven_acc", frames="")
    assert f3["paired"] == "False" and float(f3["value"]) == pytest.approx(2 / 16 - 3 / 16)


def test_a_run_not_finished_is_not_read(tmp_path):
    """A run the runner has not marked done (here: trained, evaluations of other flags on disk) is missing,
    and its files do not enter any estimate."""
    runs = [make_run(tmp_path, "img", "image", 100, 0), make_run(tmp_path, "img", "image", 100, 1)]
    runs[1]["status"] = "trained"
    report = write_study_report(tmp_path, None, runs, n_boot=100)
    with open(tmp_path / "report" / "metrics.csv") as f:
        gain = _row(list(csv.DictReader(f)), "img", 100, "vcot_gain")
    assert gain["n_seeds"] == "1" and gain["per_seed"] == "0=0.5"
    assert "2 runs in 1 arms x 1 budgets; 1 evaluated, 1 missing." in report.read_text()
    assert "| img @ 100 samples, seed 1 | trained |" in report.read_text()


def test_an_iraven_run_on_one_candidate_is_no_verdict(tmp_path):
    biased = {"informative": False, "position_bias": {"value": 0.9, "letter": "C"}}
    runs = [make_run(tmp_path, "img", "image", 100, 0),
            make_run(tmp_path, "vid", "video", 100, 0, iraven_summary=biased)]
    report = write_study_report(tmp_path, None, runs, n_boot=100)
    with open(tmp_path / "report" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    f3 = _row(rows, "img - vid", 100, "iraven_acc", frames="")
    assert f3["verdict"] == "uninformative" and "position bias 90% on candidate C" in f3["note"]
    assert "vid @ 100 samples, seed 0" in _row(rows, "vid", 100, "iraven_acc", frames="")["note"]
    assert "**1 uninformative**" in report.read_text()


@pytest.mark.parametrize("bad, message", [
    ({"seed": None}, r"runs\[0\].seed must be an integer"),
    ({"budget": "lots"}, r"runs\[0\].budget must be a positive number, got 'lots'"),
    ({"status": ...}, r"runs\[0\] lacks status"),
])
def test_bad_run_entries_name_the_field(tmp_path, bad, message):
    run = make_run(tmp_path, "img", "image", 100, 0, tasks=())
    run = {k: v for k, v in (run | bad).items() if v is not ...}
    with pytest.raises(ValueError, match=message) as e:
        write_study_report(tmp_path, None, [run])
    assert "study.json" in str(e.value)


def test_paired_difference_agrees_with_one_seed_contrast():
    """A one-seed paired contrast of two accuracies is `paired_difference` (same draw, same CI)."""
    a, b = right(14), right(9)
    h = hierarchical_bootstrap([[a], [b]], weights=(1, -1), n_boot=1000, seed=0)
    p = paired_difference(a, b, n_boot=1000, seed=0)
    assert h.value == pytest.approx(p.value)
    assert (h.ci_high - h.ci_low) == pytest.approx(p.ci_high - p.ci_low, rel=0.15)


def test_tasks_the_study_did_not_ask_for_are_not_missing(tmp_path):
    """A study evaluated with `--tasks vcot shuffle`: its runs lack I-RAVEN by design, not by accident."""
    runs = [make_run(tmp_path, "arm_a", ARMS["arm_a"], 100, seed, tasks=("vcot", "shuffle")) for seed in (0, 1)]
    spec = SimpleNamespace(name="micro", arms=[SimpleNamespace(name="arm_a")],
                           eval=("--tasks", "vcot", "shuffle", "--limit", "3"))
    text = write_study_report(tmp_path, spec, runs, n_boot=100).read_text()
    assert "2 evaluated, 0 missing." in text and "no evaluation of" not in text
    spec.eval = ("--limit", "3")  # every task asked for: I-RAVEN is missing from both runs
    text = write_study_report(tmp_path, spec, runs, n_boot=100).read_text()
    assert "0 evaluated, 2 missing." in text and "| no evaluation of iraven |" in text


def _validity_study(root, guesser: float, video: tuple[int, int] = (8, 2)) -> tuple:
    """An image and a video arm, 2 seeds, evaluated with a `blind` condition: on the temporal items 0-9 the
    video run is right from frames on 8 and blind on 2 (both seeds; `video`), the image run on 4 and 4."""
    runs = []
    for role, base, blind in (("image", 4, 4), ("video", video[0], video[1])):
        for seed in (0, 1):
            run_dir = root / "runs" / f"{role}_s{seed}"
            run_dir.mkdir(parents=True)
            (run_dir / "run.json").write_text(json.dumps(RUN_JSON[role] | {"seed": seed}))
            floors = {"floors": {"guesser": {"value": guesser, "by_kind": {"temporal": {"value": guesser, "n": 10}}}}}
            _write_task(run_dir, "vcot", VCOT, _vcot_rows({"base": base, "blind": blind, "vcot": base}), floors)
            runs.append({"arm": role, "recipe": RUN_JSON[role]["recipe"], "budget": 100, "unit": "samples",
                         "seed": seed, "run_dir": str(run_dir.relative_to(root)), "status": "done"})
    report = write_study_report(root, SimpleNamespace(name="v", arms=[]), runs, n_boot=300)
    with open(root / "report" / "metrics.csv") as f:
        return report.read_text(), list(csv.DictReader(f))


def test_validity_b_pools_the_seeds_and_judges_against_both_floors(tmp_path):
    text, rows = _validity_study(tmp_path / "low", guesser=0.2)
    lead = _row(rows, "video", 100, "frames_over_blind", items="temporal")
    assert float(lead["value"]) == pytest.approx(0.6) and lead["per_seed"] == "0=0.6;1=0.6"
    assert lead["verdict"] == "above its floors" and float(lead["ci_low"]) > 0
    acc = _row(rows, "video", 100, "frames_acc", items="temporal")
    assert float(acc["value"]) == pytest.approx(0.8) and acc["note"] == "options-only guesser 20.0%"
    flat = _row(rows, "image", 100, "frames_over_blind", items="temporal")
    assert float(flat["value"]) == 0.0 and flat["verdict"] == "not above its floors"
    assert not [r for r in rows if r["metric"] in ("frames_acc", "frames_over_blind") and r["items"] != "temporal"]
    assert not [r for r in rows if " - " in r["role"] and r["metric"].startswith("frames")]  # no finding of its own
    assert "- validity (b), `video` (video run) answering from frames (F=5, temporal items): above its floors at " \
           "100 samples." in text
    assert "| video | video | 100 samples | F=5, temporal | 80.0 [" in text
    # the same lead over blind, but accuracy from frames under the options-only guesser: not above
    _, rows = _validity_study(tmp_path / "high", guesser=0.9)
    assert _row(rows, "video", 100, "frames_over_blind", items="temporal")["verdict"] == "not above its floors"


def test_validity_b_needs_the_paired_test_as_every_verdict_does(tmp_path):
    """A lead over blind carried by 4 items, all one way, in both seeds: its bootstrap CI lies above 0, but the
    sign-flip test over the items cannot get below 2/16 = 0.125. Judged by the CI alone it was "above its
    floors"; the evaluation report's `sees_change` and every contrast also ask for the test."""
    text, rows = _validity_study(tmp_path, guesser=0.2, video=(6, 2))
    lead = _row(rows, "video", 100, "frames_over_blind", items="temporal")
    assert float(lead["value"]) == pytest.approx(0.4) and float(lead["ci_low"]) > 0
    assert lead["note"] == "p=0.12" and lead["verdict"] == "not above its floors"
    assert float(_row(rows, "video", 100, "frames_acc", items="temporal")["ci_low"]) > 0.2
    assert "- validity (b), `video` (video run) answering from frames (F=5, temporal items): not above its " \
           "floors at 100 samples." in text


def test_no_validity_rows_without_a_blind_condition(study):
    _, report, rows, *_ = study
    assert not [r for r in rows if r["metric"].startswith("frames")]
    assert "## Validity check (b)" not in report.read_text()


def test_a_study_contrast_on_a_few_items_is_held_back_by_its_paired_test(tmp_path, monkeypatch):
    """I-RAVEN, two seeds each: the video arm gets the first 6 of 16 puzzles right, the image arm the first 2.
    The seeds agree, so the hierarchical CI of video - image clears 0, but only 4 puzzles differ (sign-flip
    p = 0.125): the verdict is inconclusive and its note says why. With 10 against 2 it is supported."""
    monkeypatch.setitem(PATTERNS, "image", [p | {"iraven": 2} for p in PATTERNS["image"]])
    for video_right, expected in ((6, "inconclusive"), (10, "supported")):
        monkeypatch.setitem(PATTERNS, "video", [p | {"iraven": video_right} for p in PATTERNS["video"]])
        root = tmp_path / f"v{video_right}"
        runs = [make_run(root, arm, role, 100, seed, tasks=("iraven",))
                for arm, role in (("arm_a", "image"), ("arm_b", "video")) for seed in (0, 1)]
        spec = SimpleNamespace(name="few", arms=[SimpleNamespace(name=a) for a in ("arm_b", "arm_a")])
        write_study_report(root, spec, runs, n_boot=400)
        with open(root / "report" / "metrics.csv") as f:
            f3 = _row(list(csv.DictReader(f)), "arm_a - arm_b", 100, "iraven_acc", frames="")
        assert float(f3["ci_high"]) < 0, f3  # image - video: the CI excludes 0 in the paper's direction
        assert f3["verdict"] == expected, f3
        assert ("the paired test does not (p=0.12)" in f3["note"]) == (expected == "inconclusive")
