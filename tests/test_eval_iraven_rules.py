"""I-RAVEN accuracy by rule group: the grouping read from `meta_matrix` (hand-checked on reference puzzles
of the original generator, and against the project's generator's own rules), the task's `by_rule_group`
blocks from hand-made rows and from a small run on a tiny model, and the report's by-rule table and paired
image-vs-video contrasts per group from hand-made per-item results."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from evalsuite import stats
from evalsuite.benchmarks.iraven import CONFIG_NAMES, IRavenFormatError, generate_item, item_rng
from evalsuite.benchmarks.iraven.groups import in_group, meta_rules, rule_groups
from evalsuite.report.evaluation import discover, matched_pairs, pair_findings, pairs_section, write_report
from helpers import (IRAVEN_SETTINGS, fast_config, match_record, report_section, tiny_model,
                     write_task_results)


def _groups_of(reference: Path, path: str) -> dict:
    return rule_groups(meta_rules(np.load(reference / path)["meta_matrix"], path))


# --- the grouping --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, expected", [
    # Arithmetic Position union, Progression Type -1, Constant Size, Constant Color
    ("distribute_four/RAVEN_0_train.npz", {"spatial": ["Arithmetic"], "abstract": ["Progression"]}),
    # Constant Number/Position, Distribute_Three Type, Constant Size, Arithmetic Color sub: layout fixed
    ("distribute_four/RAVEN_6_val.npz", {"abstract": ["Arithmetic", "Distribute_Three"]}),
    # Progression Position +2, Constant Type, Constant Size, Distribute_Three Color
    ("distribute_nine/RAVEN_8_test.npz", {"spatial": ["Progression"], "abstract": ["Distribute_Three"]}),
    # Constant Number/Position, Constant Type, Constant Size, Distribute_Three Color
    ("center_single/RAVEN_9_test.npz", {"abstract": ["Distribute_Three"]}),
    # Out: all Constant | In: Constant Number/Position, Constant Type, Distribute_Three Size, Constant Color
    ("in_center_single_out_center_single/RAVEN_7_val.npz", {"abstract": ["Distribute_Three"]}),
    # Out: all Constant | In: Distribute_Three Number, Constant Type, Arithmetic Size sub, Distribute_Three Color
    ("in_distribute_four_out_center_single/RAVEN_6_val.npz",
     {"spatial": ["Distribute_Three"], "abstract": ["Arithmetic", "Distribute_Three"]}),
])
def test_groups_of_reference_puzzles_checked_by_hand(path, expected, iraven_reference):
    assert _groups_of(iraven_reference, path) == expected


def test_meta_rules_decode_both_components_of_a_reference_puzzle(iraven_reference):
    path = "in_distribute_four_out_center_single/RAVEN_6_val.npz"
    assert meta_rules(np.load(iraven_reference / path)["meta_matrix"], path) == [
        [0, "Constant", "Number/Position"], [0, "Constant", "Type"], [0, "Constant", "Size"], [0, "Constant", "Color"],
        [1, "Distribute_Three", "Number"], [1, "Constant", "Type"], [1, "Arithmetic", "Size"],
        [1, "Distribute_Three", "Color"]]


def test_every_reference_puzzle_agrees_with_the_rules_answers_json_names(iraven_reference):
    """An independent path: answers.json's rule names and attributes (not the meta_matrix)."""
    puzzles = json.loads((iraven_reference / "answers.json").read_text())["puzzles"]
    assert len(puzzles) == 42
    for path, entry in puzzles.items():
        expected: dict[str, set] = {}
        for rule in (r for comp in entry["rules"] for r in comp if r["name"] != "Constant"):
            group = "spatial" if rule["attr"] in ("Number", "Position") else "abstract"
            expected.setdefault(group, set()).add(rule["name"])
        assert _groups_of(iraven_reference, path) == {g: sorted(v) for g, v in expected.items()}, path


def test_generated_puzzles_keep_their_rules_in_the_meta_matrix():
    seen = set()
    for config in CONFIG_NAMES:
        for k in range(3):
            item = generate_item(config, item_rng(7, config, k), render=False)
            rules = [[r.component, r.name, r.attr] for group in item.rules for r in group]
            assert meta_rules(item.meta_matrix(), "generated") == rules
            seen |= set(rule_groups(rules))
    assert seen == {"spatial", "abstract"}


def test_in_group_and_abstract_only():
    both, spatial, abstract, none = ({"rule_groups": g} for g in (
        {"spatial": ["Progression"], "abstract": ["Arithmetic"]}, {"spatial": ["Arithmetic"]},
        {"abstract": ["Distribute_Three"]}, {}))
    assert [in_group(r, "spatial") for r in (both, spatial, abstract, none)] == [True, True, False, False]
    assert [in_group(r, "abstract") for r in (both, spatial, abstract, none)] == [True, False, True, False]
    assert [in_group(r, "abstract_only") for r in (both, spatial, abstract, none)] == [False, False, True, False]
    assert not in_group({"item": "old row"}, "abstract")  # rows from before the grouping count nowhere


@pytest.mark.parametrize("row, index", [
    ([1, 1, 0, 0, 0, 0, 1, 0, 0], 2),  # two rule columns
    ([0, 1, 0, 0, 1, 1, 0, 0, 0], 5),  # Number and Position together, but not Constant
    ([0, 1, 0, 0, 0, 0, 0, 0, 0], 0),  # no attribute
    ([0, 2, 0, 0, 0, 0, 1, 0, 0], 7),  # not 0/1
])
def test_a_malformed_meta_matrix_row_names_file_field_and_row(row, index):
    m = np.zeros((8, 9), np.uint8)
    m[0] = [1, 0, 0, 0, 1, 1, 0, 0, 0]
    m[index] = row
    with pytest.raises(IRavenFormatError, match=rf"bad\.npz: field 'meta_matrix' row {index} is .*expected 0/1 values"):
        meta_rules(m, "bad.npz")


def test_predict_records_the_rules_and_a_bad_meta_matrix_is_an_error_row(tmp_path):
    from evalsuite.resources import Resources
    from evalsuite.tasks.iraven import IRavenTask

    cfg = fast_config(limit=1)
    task = IRavenTask(cfg, Resources(cfg, tmp_path / "cache"))
    item = next(p for p in task.items() if p.config == "distribute_four")
    arrays = dict(np.load(item.path))
    arrays["meta_matrix"][1, :4] = 1  # a Type rule that is every rule at once
    bad = tmp_path / "distribute_four" / item.path.name
    bad.parent.mkdir()
    np.savez(bad, **arrays)
    (row,) = task.predict(None, SimpleNamespace(**vars(item) | {"path": bad}), [item.id])
    assert "field 'meta_matrix' row 1" in row["error"] and str(bad) in row["error"] and "pred" not in row


# --- the task's metrics ----------------------------------------------------------------------------------
G = {"s": {"spatial": ["Progression"]}, "a": {"abstract": ["Arithmetic"]},
     "sa": {"spatial": ["Arithmetic"], "abstract": ["Distribute_Three", "Progression"]}, "-": {}}


def _row(i: int, config: str, groups: str | None, correct: bool) -> dict:
    row = {"key": f"p{i}", "item": f"p{i}", "config": config, "answer": 0, "pred": 0 if correct else 1,
           "correct": correct}
    return row | ({"rule_groups": G[groups]} if groups else {})


def test_summary_by_rule_group_from_hand_made_rows(tmp_path):
    from evalsuite.resources import Resources
    from evalsuite.tasks.iraven import IRavenTask

    cfg = fast_config(n_boot=300, seed=4)
    task = IRavenTask(cfg, Resources(cfg, tmp_path / "cache"))
    spec = [("distribute_four", "s", True), ("distribute_four", "sa", False), ("distribute_four", "sa", True),
            ("distribute_four", "a", True), ("center_single", "a", False), ("center_single", "a", True),
            ("center_single", "-", True), ("center_single", None, False)]
    rows = [_row(i, *s) for i, s in enumerate(spec)] + [{"key": "e", "item": "e", "config": "center_single",
                                                          "error": "unreadable", "rule_groups": G["s"]}]
    s = task.summarize(rows)

    def est(correct):
        return stats.accuracy_ci(correct, n_boot=300, seed=4).to_dict()

    # spatial: rows 0-2; abstract: 1-5; abstract only: 3-5 (rows 6: no active rule, 7: no metadata)
    assert s["by_rule_group"] == {"spatial": est([1, 0, 1]), "abstract": est([0, 1, 1, 0, 1]),
                                  "abstract_only": est([1, 0, 1])}
    assert s["by_rule_group"]["spatial"]["n"] == 3 and s["by_rule_group"]["abstract"]["value"] == pytest.approx(0.6)
    assert s["rule_group_counts"] == {"spatial": 3, "abstract": 5, "abstract_only": 3, "both": 2, "neither": 1,
                                      "unrecorded": 1}
    assert s["by_rule_type"] == {"spatial": {"Progression": est([1]), "Arithmetic": est([0, 1])},
                                 "abstract": {"Arithmetic": est([1, 0, 1]), "Distribute_Three": est([0, 1]),
                                              "Progression": est([0, 1])}}
    assert s["per_config_by_rule_group"] == {
        "center_single": {"abstract": est([0, 1]), "abstract_only": est([0, 1])},
        "distribute_four": {"spatial": est([1, 0, 1]), "abstract": est([0, 1, 1]), "abstract_only": est([1])}}
    flat = task.flat_metrics(s)
    assert flat["iraven/rule_group/abstract/acc"] == pytest.approx(0.6)
    assert flat["iraven/rule_group/spatial/acc_ci_low"] == s["by_rule_group"]["spatial"]["ci_low"]
    assert flat["iraven/rule_group/abstract/Arithmetic/acc"] == pytest.approx(2 / 3)
    assert "iraven/rule_group/spatial/Distribute_Three/acc" not in flat  # no such puzzle: no number


def test_metrics_json_has_by_rule_group_on_a_small_run(tmp_path, tmp_path_factory, one_thread):
    from evalsuite.cli import main
    from evalsuite.outputs import read_rows

    model = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "models" / "tiny-llava")
    assert main(["iraven", str(model), "--iraven-limit", "2", "--n-boot", "100", "--seed", "3",
                 "--no-tracking", "--no-progress"]) == 0
    result = json.loads((model / "eval/iraven/metrics.json").read_text())
    assert result["settings"]["rule_groups"].startswith("active rules: spatial=Number,Position")
    m, rows = result["metrics"], read_rows(model / "eval/iraven/predictions.jsonl")
    assert len(rows) == 2 * len(CONFIG_NAMES)
    # the groups each puzzle should have, from the generator's own rules (puzzle k of the seed-2026 split)
    expected = {}
    for config in CONFIG_NAMES:
        for k in range(2):
            item = generate_item(config, item_rng(2026, config, k), render=False)
            expected[f"{config}/RAVEN_{k}_test"] = rule_groups([[r.component, r.name, r.attr]
                                                                for g in item.rules for r in g])
    assert {r["item"]: r["rule_groups"] for r in rows} == expected
    correct = {r["item"]: r["correct"] for r in rows}
    members = {g: [i for i in expected if in_group({"rule_groups": expected[i]}, g)]
               for g in ("spatial", "abstract", "abstract_only")}
    assert all(members.values())  # this split has puzzles of every group ...
    assert m["rule_group_counts"]["neither"] >= 1 and m["rule_group_counts"]["both"] >= 1  # ... and of none, of both
    for g, items in members.items():
        assert m["by_rule_group"][g] == stats.accuracy_ci([correct[i] for i in items], n_boot=100, seed=3).to_dict()
    assert sum(m["rule_group_counts"][g] for g in ("abstract_only", "spatial", "neither")) == len(rows)
    for config, groups in m["per_config_by_rule_group"].items():
        for g, e in groups.items():
            assert e["n"] == sum(1 for i in members[g] if i.startswith(config + "/"))


# --- the report ----------------------------------------------------------------------------------------
# ten puzzles: p0-p3 spatial (and abstract), p4-p7 abstract only, p8-p9 no active rule
PUZZLE_GROUPS = ["sa"] * 4 + ["a"] * 4 + ["-"] * 2
RIGHT = {"image": [1, 0, 0, 0, 1, 1, 1, 0, 1, 0], "video": [1, 1, 1, 1, 1, 0, 1, 0, 0, 0]}


def _iraven_ckpt(root, name: str, role: str, run: dict) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps(run))
    rows = [_row(i, "distribute_four", g, bool(ok)) for i, (g, ok) in enumerate(zip(PUZZLE_GROUPS, RIGHT[role]))]
    rows.append(_row(10, "distribute_four", None, True))  # an old row without rule metadata: in no group
    by_group = {g: stats.accuracy_ci([r["correct"] for r in rows if in_group(r, g)]).to_dict()
                for g in ("spatial", "abstract", "abstract_only")}
    m = {"n_items": 11, "chance": 0.125, "informative": True, "position_bias": {"value": 0.3, "index": 0},
         "acc": stats.accuracy_ci([r["correct"] for r in rows]).to_dict(), "by_rule_group": by_group,
         "by_rule_type": {"spatial": {"Arithmetic": by_group["spatial"]}}}
    write_task_results(d, "iraven", IRAVEN_SETTINGS, m, rows)


def test_report_by_rule_table_and_paired_contrasts_per_group(tmp_path):
    _iraven_ckpt(tmp_path, "video_run", "video", {"kind": "video"})
    _iraven_ckpt(tmp_path, "image_run", "image", {"kind": "image", "match": match_record(tmp_path, "video_run")})
    (pair,) = matched_pairs(discover(tmp_path))
    found = pair_findings(pair)
    kw = {"n_boot": IRAVEN_SETTINGS["n_boot"], "seed": IRAVEN_SETTINGS["seed"]}
    spans = {"spatial": slice(0, 4), "abstract": slice(0, 8), "abstract_only": slice(4, 8)}
    assert set(found["f3_rule_groups"]) == set(spans)
    for g, span in spans.items():
        img, vid = RIGHT["image"][span], RIGHT["video"][span]
        got = found["f3_rule_groups"][g]
        assert got["n"] == len(img)
        assert got["contrast"] == stats.paired_difference(vid, img, **kw).to_dict()
        assert got["subject_acc"] == stats.accuracy_ci(img, **kw).to_dict()
    spatial = found["f3_rule_groups"]["spatial"]["contrast"]
    assert spatial["value"] == pytest.approx(0.75) and spatial["discordant"] == [0, 3]  # video right on p1-p3
    assert found["f3_rule_groups"]["abstract_only"]["contrast"]["value"] == pytest.approx(-0.25)
    assert found["f3"]["n"] == 11  # all puzzles, with or without metadata

    text = write_report(tmp_path, track=False).read_text()
    iraven = report_section(text, "I-RAVEN transfer")
    (line,) = [x for x in iraven.splitlines() if x.startswith("| spatial | image_run | image | 4 |")]
    cells = line.split(" | ")  # image run right on 1 of the 4 spatial puzzles, all of them Arithmetic ones
    assert cells[4].startswith("25.0 [") and cells[5] == "" and cells[6].startswith("25.0 [") and cells[7] == " |"
    (line,) = [x for x in iraven.splitlines() if x.startswith("| abstract only | video_run | video | 4 |")]
    assert "50.0 [" in line
    (row,) = [x for x in iraven.splitlines() if x.startswith("| image_run vs video_run (image vs video) | spatial |")]
    assert "| 4 | 25.0 [" in row and f"| {100 * spatial['value']:+.1f} [{100 * spatial['ci_low']:+.1f}, " in row
    assert "+75.0 [" in row and f"p={spatial['p_value']:.2g}" in row
    assert "| image_run vs video_run (image vs video) | abstract only | 4 |" in iraven

    _, metrics = pairs_section([pair])
    key = "contrast/image_run_vs_video_run/f3/rule_group/spatial/contrast"
    assert metrics[f"{key}/value"] == spatial["value"] and metrics[f"{key}/ci_low"] == spatial["ci_low"]
    with open(tmp_path / "report" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    contrasts = {r["metric"]: r for r in rows if r["task"] == "findings"}
    assert float(contrasts["f3/rule_group/abstract_only/contrast"]["value"]) == pytest.approx(-0.25)
    per_ckpt = {(r["checkpoint"], r["metric"]): r for r in rows if r["task"] == "iraven"}
    assert float(per_ckpt[("video_run", "by_rule_group/spatial")]["value"]) == pytest.approx(1.0)


def test_report_says_when_no_evaluation_recorded_rule_groups(tmp_path):
    _iraven_ckpt(tmp_path, "video_run", "video", {"kind": "video"})
    metrics = tmp_path / "video_run/eval/iraven/metrics.json"
    data = json.loads(metrics.read_text())
    del data["metrics"]["by_rule_group"]
    metrics.write_text(json.dumps(data))
    iraven = report_section(write_report(tmp_path, track=False).read_text(), "I-RAVEN transfer")
    assert "No I-RAVEN evaluation here recorded accuracy by rule group" in iraven
    assert "By rule group, paired" not in iraven  # no pair: no contrast table


def test_an_uninformative_run_shows_its_bias_in_the_by_rule_table(tmp_path):
    _iraven_ckpt(tmp_path, "video_run", "video", {"kind": "video"})
    _iraven_ckpt(tmp_path, "image_run", "image", {"kind": "image", "match": match_record(tmp_path, "video_run")})
    metrics = tmp_path / "image_run/eval/iraven/metrics.json"
    data = json.loads(metrics.read_text())
    data["metrics"] |= {"informative": False, "position_bias": {"value": 0.8, "index": 3}}
    metrics.write_text(json.dumps(data))
    iraven = report_section(write_report(tmp_path, track=False).read_text(), "I-RAVEN transfer")
    (line,) = [x for x in iraven.splitlines() if x.startswith("| spatial | image_run |")]
    assert "uninformative (position bias 80% on candidate D)" in line and "25.0" not in line
    assert "`image_run` is uninformative on I-RAVEN (position bias 80% on candidate D)" in iraven
