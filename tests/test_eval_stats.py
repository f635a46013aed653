"""The suite's statistics against values computed by hand, through runner -> metrics.json -> MLflow names."""

from __future__ import annotations

import json
import shutil

import pytest

from evalsuite import stats
from evalsuite.checkpoints import checkpoint_ref
from evalsuite.comparisons import flatten
from evalsuite.outputs import read_rows
from evalsuite.runner import evaluate
from evalsuite.tasks.vcot import VCoTTask
from test_eval_support import fast_config, tiny_model

# Per-item correctness of 10 items at F=3, chosen so that every number below is easy to check by hand.
BASE = [1, 0, 0, 0, 1, 0, 0, 0, 0, 1]     # 3/10
VCOT = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]     # 5/10
CAPTION = [1, 0, 0, 0, 1, 0, 0, 0, 0, 1]  # same as base
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
        right = {"base": BASE, "vcot": VCOT, "caption": CAPTION}[cond][i]
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
    assert f3["failed_vcot"] == {"value": 0.0, "n": 10, "count": 0}

    f4 = m["metrics"]["f4"]
    assert f4["n_items"] == 9  # the unreadable item is out of every condition (paired)
    assert f4["acc_base"]["value"] == pytest.approx(2 / 9)  # items 4, 9
    assert f4["acc_vcot"]["value"] == pytest.approx(3 / 9)  # items 2, 3, 4 (item 1 failed extraction)
    assert f4["failed_vcot"] == {"value": pytest.approx(1 / 9), "n": 9, "count": 1}
    assert f4["gain"]["discordant"] == [1, 2] and f4["gain"]["p_value"] == pytest.approx(1.0)
    assert m["errors"] == [{"id": m["errors"][0]["id"], "reason": "unreadable video"}]


def test_intervals_are_the_stats_module_bootstrap_with_the_run_seed(evaluated):
    _, m = evaluated
    f3 = m["metrics"]["f3"]
    acc = stats.accuracy_ci(VCOT, n_boot=500, seed=7)
    assert (f3["acc_vcot"]["ci_low"], f3["acc_vcot"]["ci_high"]) == (acc.ci_low, acc.ci_high)
    gain = stats.paired_difference(VCOT, BASE, n_boot=500, seed=7)
    assert (f3["gain"]["ci_low"], f3["gain"]["ci_high"], f3["gain"]["p_value"]) == (
        gain.ci_low, gain.ci_high, gain.p_value)


def test_mlflow_names_line_up(evaluated):
    _, m = evaluated
    flat = flatten("vcot", m["metrics"])
    for name in ("acc_base", "acc_caption", "acc_vcot", "gain", "gain_ci_low", "gain_ci_high", "gain_p",
                 "caption_gain", "caption_gain_p", "failed_vcot", "n"):
        assert f"vcot/f3/{name}" in flat and f"vcot/f4/{name}" in flat
    assert flat["vcot/f3/gain"] == pytest.approx(0.2) and flat["vcot/f3/gain_p"] == pytest.approx(0.625)


def test_metrics_agree_with_the_predictions_file(evaluated):
    ckpt, m = evaluated
    rows = read_rows(ckpt / "eval/vcot/predictions.jsonl")
    assert len(rows) == 10 * 2 * 3 and len({r["key"] for r in rows}) == len(rows)
    ok = [r for r in rows if r["frames"] == 3 and r["condition"] == "vcot"]
    assert sum(r["correct"] for r in ok) / len(ok) == m["metrics"]["f3"]["acc_vcot"]["value"]
