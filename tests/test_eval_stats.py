"""The suite's statistics against values computed by hand, through runner -> metrics.json -> MLflow names;
failure rate, strict and random-fill accuracy of generate scoring."""

from __future__ import annotations

import json
import shutil

import pytest

from evalsuite import stats
from evalsuite.checkpoints import checkpoint_ref
from evalsuite.comparisons import flatten, summarize
from evalsuite.outputs import read_rows
from evalsuite.runner import evaluate
from evalsuite.tasks.vcot import VCoTTask
from helpers import fast_config, tiny_model

# Per-item correctness of 10 items at F=3, chosen so that every number below is easy to check by hand.
BASE = [1, 0, 0, 0, 1, 0, 0, 0, 0, 1]     # 3/10
VCOT = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]     # 5/10
CAPTION = [1, 0, 0, 0, 1, 0, 0, 0, 0, 1]  # same as base
BLIND = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]    # 1/10
TEXT_ONLY = [1, 1, 0, 0, 0, 0, 1, 1, 0, 0]  # 4/10
REVERSED = [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]  # 2/10
# At F=4: item 0 cannot be read (error: excluded everywhere), item 1's vcot answer is a failed
# extraction (counted wrong), the rest follow the F=3 pattern.


def scripted_predict(self, subject, item, todo):
    """Stands in for the model: answers right or wrong as scripted, in the generate-scoring row format."""
    i = [it.id for it in self.items()].index(item.id)
    rows = []
    for key in todo:
        where = self._where(key, item)
        f, cond = where["frames"], where["condition"]
        if f == 4 and i == 0:
            rows.append({"key": key, **where, "error": "unreadable video"})
            continue
        right = {"base": BASE, "vcot": VCOT, "caption": CAPTION, "blind": BLIND, "text_only": TEXT_ONLY,
                 "reversed": REVERSED}[cond][i]
        pred = item.answer if right else (item.answer + 1) % 5
        method = "letter"
        if f == 4 and i == 1 and cond == "vcot":
            pred, method = None, "failed"
        rows.append({"key": key, **where, "answer": item.answer, "pred": pred, "extraction": method,
                     "correct": pred == item.answer})
    return rows


@pytest.fixture
def evaluated(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setattr(VCoTTask, "predict", scripted_predict)
    ckpt = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "m")
    cfg = fast_config(limit=10, frames=(3, 4), n_boot=500, seed=7, scoring="generate", infills="oracle")
    evaluate([checkpoint_ref(ckpt)], ["vcot"], cfg, tmp_path / "cache")
    return ckpt, json.loads((ckpt / "eval/vcot/metrics.json").read_text())


def test_accuracies_gains_and_p_values_by_hand(evaluated):
    _, m = evaluated
    f3 = m["metrics"]["f3"]
    assert f3["n_items"] == 10
    assert (f3["acc_base"]["value"], f3["acc_vcot"]["value"], f3["acc_caption"]["value"]) == (0.3, 0.5, 0.3)
    gain = f3["gain"]
    assert gain["value"] == pytest.approx(0.2)
    # discordant: base right & vcot wrong = item 9 (1); vcot right & base wrong = items 1, 2, 3 (3)
    assert gain["discordant"] == [1, 3]
    assert gain["p_value"] == pytest.approx(2 * (1 + 4) / 2**4)  # 2 * P[Bin(4, 1/2) <= 1] = 0.625
    assert gain["ci_low"] <= 0.2 <= gain["ci_high"]
    cap = f3["caption_gain"]
    assert (cap["value"], cap["ci_low"], cap["ci_high"], cap["p_value"], cap["discordant"]) == (0, 0, 0, 1.0, [0, 0])
    assert (f3["acc_blind"]["value"], f3["acc_text_only"]["value"], f3["acc_reversed"]["value"]) == (0.1, 0.4, 0.2)
    # text_only - blind: text_only right & blind wrong = items 1, 6, 7 (3); the other way round: none
    text_only = f3["text_only_gain"]
    assert text_only["value"] == pytest.approx(0.3) and text_only["discordant"] == [0, 3]
    assert text_only["p_value"] == pytest.approx(2 / 2**3)  # 2 * P[Bin(3, 1/2) = 0] = 0.25
    assert f3["failed_vcot"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 10, "count": 0}
    # no failure at F=3: random-fill accuracy is the strict accuracy, interval included
    assert f3["random_fill_vcot"] == f3["acc_vcot"] and f3["random_fill_base"] == f3["acc_base"]

    f4 = m["metrics"]["f4"]
    assert f4["n_items"] == 9  # the unreadable item is out of every condition (paired)
    assert f4["acc_base"]["value"] == pytest.approx(2 / 9)  # items 4, 9
    assert f4["acc_vcot"]["value"] == pytest.approx(3 / 9)  # items 2, 3, 4 (item 1 failed extraction)
    failed_ci = stats.accuracy_ci([1, 0, 0, 0, 0, 0, 0, 0, 0], n_boot=500, seed=7)
    assert f4["failed_vcot"] == {"value": pytest.approx(1 / 9), "ci_low": failed_ci.ci_low,
                                 "ci_high": failed_ci.ci_high, "n": 9, "count": 1}
    assert f4["failed_base"]["count"] == 0 and f4["failed_base"]["value"] == 0.0
    # strict counts the failed item wrong; random-fill scores it 1/5: (3 + 1/5) / 9
    assert f4["random_fill_vcot"]["value"] == pytest.approx(16 / 45)
    assert f4["random_fill_vcot"]["value"] - f4["acc_vcot"]["value"] == pytest.approx(f4["failed_vcot"]["value"] / 5)
    assert f4["gain"]["discordant"] == [1, 2] and f4["gain"]["p_value"] == pytest.approx(1.0)
    assert m["errors"] == [{"id": m["errors"][0]["id"], "reason": "unreadable video"}]


def test_intervals_are_the_stats_module_bootstrap_with_the_run_seed(evaluated):
    _, m = evaluated
    f3 = m["metrics"]["f3"]
    acc = stats.accuracy_ci(VCOT, n_boot=500, seed=7)
    assert (f3["acc_vcot"]["ci_low"], f3["acc_vcot"]["ci_high"]) == (acc.ci_low, acc.ci_high)
    # F=4 vcot: items 1..9 of the scripted pattern, item 1 a failed extraction
    correct, failed = [0, 1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0, 0]
    fill = stats.random_fill_accuracy_ci(correct, failed, 5, n_boot=500, seed=7)
    f4 = m["metrics"]["f4"]["random_fill_vcot"]
    assert (f4["value"], f4["ci_low"], f4["ci_high"], f4["n"]) == (fill.value, fill.ci_low, fill.ci_high, 9)
    gain = stats.paired_difference(VCOT, BASE, n_boot=500, seed=7)
    assert (f3["gain"]["ci_low"], f3["gain"]["ci_high"], f3["gain"]["p_value"]) == (
        gain.ci_low, gain.ci_high, gain.p_value)


def test_mlflow_names_line_up(evaluated):
    _, m = evaluated
    flat = flatten("vcot", m["metrics"])
    for name in ("acc_base", "acc_caption", "acc_vcot", "acc_blind", "acc_text_only", "acc_reversed", "gain",
                 "gain_ci_low", "gain_ci_high", "gain_p", "caption_gain", "caption_gain_p", "text_only_gain",
                 "text_only_gain_p", "failed_vcot", "failed_vcot_ci_low", "failed_vcot_ci_high",
                 "random_fill_vcot", "random_fill_vcot_ci_low", "random_fill_vcot_ci_high", "n"):
        assert f"vcot/f3/{name}" in flat and f"vcot/f4/{name}" in flat
    assert flat["vcot/f3/gain"] == pytest.approx(0.2) and flat["vcot/f3/gain_p"] == pytest.approx(0.625)
    assert flat["vcot/f4/random_fill_vcot"] == pytest.approx(16 / 45)


def test_metrics_agree_with_the_predictions_file(evaluated):
    ckpt, m = evaluated
    rows = read_rows(ckpt / "eval/vcot/predictions.jsonl")
    assert len(rows) == 10 * 2 * 6 and len({r["key"] for r in rows}) == len(rows)
    ok = [r for r in rows if r["frames"] == 3 and r["condition"] == "vcot"]
    assert sum(r["correct"] for r in ok) / len(ok) == m["metrics"]["f3"]["acc_vcot"]["value"]


def test_random_fill_accuracy_by_hand():
    correct, failed = [1, 0, 0, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 1]
    est = stats.random_fill_accuracy_ci(correct, failed, 5, n_boot=300, seed=1)
    assert est.value == pytest.approx((2 + 3 / 5) / 8) and est.n == 8
    assert stats.random_fill_accuracy_ci(correct, failed, 4, n_boot=10, seed=1).value == pytest.approx((2 + 3 / 4) / 8)
    # the same seed resamples the same items as the strict accuracy: every bound is at least the strict one
    strict = stats.accuracy_ci(correct, n_boot=300, seed=1)
    assert est.ci_low >= strict.ci_low and est.ci_high >= strict.ci_high and est.ci_high > strict.ci_high
    assert est.ci_low <= est.value <= est.ci_high
    # nothing failed: exactly the strict accuracy
    assert stats.random_fill_accuracy_ci(correct, [0] * 8, 5, n_boot=300, seed=1) == strict
    # every item failed: exactly chance, with no spread
    allfail = stats.random_fill_accuracy_ci([0] * 6, [1] * 6, 5, n_boot=100, seed=0)
    assert (allfail.value, allfail.ci_low, allfail.ci_high) == (0.2, 0.2, 0.2)


@pytest.mark.parametrize("correct, failed, n_options, match", [
    ([1, 0], [1, 0], 5, "both correct and failed"),
    ([1, 0], [0], 5, "length mismatch"),
    ([1, 0], [0, 1], 1, "n_options"),
    ([1, 2], [0, 0], 5, "only 0/1"),
])
def test_random_fill_rejects_bad_input(correct, failed, n_options, match):
    with pytest.raises(ValueError, match=match):
        stats.random_fill_accuracy_ci(correct, failed, n_options)


def _rows(preds: list, answers: list, extraction: bool) -> list[dict]:
    out = []
    for i, (p, a) in enumerate(zip(preds, answers)):
        for cond in ("base", "vcot"):
            row = {"item": f"q{i}", "frames": 5, "condition": cond, "pred": p if cond == "vcot" else a, "answer": a}
            if extraction:
                row["extraction"] = "failed" if p is None else "letter"
            out.append(row)
    return out


def test_failures_and_random_fill_per_condition_for_generate_scoring_only():
    answers = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    preds = [0, None, None, 3, 0, None, 1, 2, 0, None]  # vcot: 4 right, 4 failed, 2 wrong
    gen = summarize(_rows(preds, answers, True), (5,), ("base", "vcot"), {"gain": ("vcot", "base")},
                    n_boot=200, seed=0, n_options=5)["f5"]
    assert gen["acc_vcot"]["value"] == pytest.approx(0.4)  # strict
    assert gen["failed_vcot"]["value"] == pytest.approx(0.4) and gen["failed_vcot"]["count"] == 4
    assert gen["random_fill_vcot"]["value"] == pytest.approx(0.4 + 0.4 / 5)
    assert gen["failed_vcot"]["ci_low"] < 0.4 < gen["failed_vcot"]["ci_high"]
    assert gen["random_fill_base"]["value"] == gen["acc_base"]["value"] == 1.0
    assert gen["gain"]["value"] == pytest.approx(-0.6)  # the gain compares strict accuracies
    # loglik rows (no extraction): no failure can happen, and no such keys are written
    loglik = summarize(_rows([0, 1, 2, 3, 0, 0, 1, 2, 0, 4], answers, False), (5,), ("base", "vcot"),
                       {"gain": ("vcot", "base")}, n_boot=200, seed=0)["f5"]
    assert not [k for k in loglik if k.startswith(("failed_", "random_fill_"))]
    assert loglik["acc_vcot"]["value"] == pytest.approx(0.8)
