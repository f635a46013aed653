"""The perturbation task: seeded derangement, what each perturbation really feeds the model, paired drops,
and `vcot` + `shuffle` + `iraven` end to end on a tiny checkpoint (outputs, shared infill cache, skip)."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

import evalsuite.resources
import evalsuite.tasks.vcot as vcot_mod  # the shuffle task answers through VCoTTask.answer
from evalsuite.checkpoints import checkpoint_ref
from evalsuite.config import FrameInputs
from evalsuite.outputs import read_rows
from evalsuite.perturb import derangement, shuffle_words
from evalsuite.resources import Resources
from evalsuite.runner import evaluate
from evalsuite.scoring import OptionScores
from evalsuite.tasks import TASKS
from evalsuite.tasks.shuffle import ShuffleTask
from helpers import fast_config, make_adapter, tiny_model


@pytest.mark.parametrize("n", [2, 3, 7, 200])
def test_derangement_has_no_fixed_point_and_is_seeded(n):
    for seed in range(20):
        perm = derangement(n, seed)
        assert sorted(perm) == list(range(n))
        assert all(p != i for i, p in enumerate(perm))
        assert perm == derangement(n, seed)
    if n > 3:  # seeds matter (2 and 3 items have only 1 and 2 derangements)
        assert len({tuple(derangement(n, s)) for s in range(10)}) > 1
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


def test_shuffle_words_keeps_the_multiset_and_changes_the_order():
    text = "the red circle moves to the left while a blue square appears"
    out = shuffle_words(text, "s0|item|f5|0")
    assert Counter(out.split()) == Counter(text.split())
    assert out != text and out == shuffle_words(text, "s0|item|f5|0")
    assert len({shuffle_words(text, f"s0|item|f5|{k}") for k in range(10)}) > 1  # the key seeds it
    assert shuffle_words("same same", "k") == "same same" and shuffle_words("two words", "k") == "words two"


def _captured_task(tmp_path, monkeypatch, **cfg):
    """A shuffle task over oracle infills whose scoring records what the model would have been shown."""
    task = ShuffleTask(fast_config(infills="oracle", **cfg), Resources(fast_config(infills="oracle"), tmp_path))
    seen = []

    def score(model, processor, content, images, options, videos=None, image_options=None, video_fps=None,
              norm="mean", option_batch_bytes=None):
        assert not videos  # every perturbation is a vCoT input: frames go in as images
        seen.append((content, images))
        return OptionScores([0.0] * len(options), [1] * len(options))

    monkeypatch.setattr(vcot_mod, "score_options", score)
    return task, seen


def _texts(content):
    return [p["text"].strip() for p in content if p["type"] == "text"][:-1]  # the last one is the question


def test_each_perturbation_feeds_what_it_says(tmp_path, monkeypatch):
    from data_recipes.synthetic.narration import item_oracle_transition

    task, seen = _captured_task(tmp_path, monkeypatch, limit=4, frames=(3, 4))
    # native requested: shuffle still feeds images (text sits between the frames in every condition)
    subject = SimpleNamespace(model=None, processor=None, inputs=FrameInputs("native", None))
    differs = False
    for item in task.items():
        partner = task.partner[item.id]
        assert partner.id != item.id
        seen.clear()
        rows = task.predict(subject, item, task.keys(item))
        by = {(r["frames"], r["condition"]): (r, content, imgs) for r, (content, imgs) in zip(rows, seen)}
        assert {r["video_input"] for r in rows} == {"images"}
        for f in task.cfg.frames:
            idx, pidx = task.bench.indices(item, f), task.bench.indices(partner, f)
            own = [item_oracle_transition(item.meta, a, b) for a, b in zip(idx, idx[1:])]
            other = [item_oracle_transition(partner.meta, a, b) for a, b in zip(pidx, pidx[1:])]
            differs |= own != other
            row, content, imgs = by[(f, "vcot")]
            assert _texts(content) == own and row["infills_from"] == row["frames_from"] == item.id
            row, content, imgs = by[(f, "text")]
            assert _texts(content) == other and row["infills_from"] == partner.id and row["frames_from"] == item.id
            assert [np.asarray(i).tolist() for i in imgs] == [np.asarray(i).tolist() for i in task.bench.frames(item, idx)]
            row, content, imgs = by[(f, "visual")]
            assert _texts(content) == own and row["frames_from"] == partner.id and row["indices"] == pidx
            assert [np.asarray(i).tolist() for i in imgs] == [np.asarray(i).tolist() for i in task.bench.frames(partner, pidx)]
            row, content, imgs = by[(f, "words")]
            assert [Counter(t.split()) for t in _texts(content)] == [Counter(t.split()) for t in own]
            assert _texts(content) != own  # oracle captions have several words: the order changed
            row, content, imgs = by[(f, "order")]
            assert sorted(_texts(content)) == sorted(own) and row["indices"] == idx  # own infills, own frames
            assert _texts(content) == [own[i] for i in row["order"]] and row["order"] != list(range(f - 1))
    assert differs  # else "text" could not be told from "vcot" and the test above would prove nothing


def test_drops_are_vcot_minus_perturbed_and_paired(tmp_path, monkeypatch):
    task, _ = _captured_task(tmp_path, monkeypatch, limit=4, frames=(3,))
    correct = {"vcot": [1, 1, 1, 0], "text": [1, 0, 0, 0], "visual": [1, 1, 1, 1], "words": [1, 1, 1, 0],
               "order": [0, 1, 1, 0]}
    rows = [{"item": f"i{k}", "frames": 3, "condition": c, "answer": 2, "pred": 2 if ok else 0}
            for c, v in correct.items() for k, ok in enumerate(v)]
    rows.append({"item": "i9", "frames": 3, "condition": "vcot", "answer": 1, "pred": 1, "error": "broken"})
    block = task.summarize(rows)["f3"]
    assert block["n_items"] == 4 and block["acc_vcot"]["value"] == 0.75 and block["acc_text"]["value"] == 0.25
    assert block["drop_text"]["value"] == pytest.approx(0.5) and block["drop_text"]["discordant"] == [0, 2]
    assert block["drop_visual"]["value"] == pytest.approx(-0.25) and block["drop_words"]["value"] == 0.0
    assert block["drop_order"]["value"] == pytest.approx(0.25) and block["drop_order"]["discordant"] == [0, 1]
    flat = task.flat_metrics(task.summarize(rows))
    for name in ("acc_vcot", "acc_text", "acc_visual", "acc_words", "acc_order", "drop_text", "drop_text_ci_low",
                 "drop_text_ci_high", "drop_text_p", "drop_visual_p", "drop_words", "drop_order", "drop_order_p"):
        assert f"shuffle/f3/{name}" in flat
    assert "drop text +0.500" in task.headline(task.summarize(rows))


def test_all_tasks_end_to_end_share_the_infill_cache_and_skip(tmp_path, tmp_path_factory, monkeypatch,
                                                              one_thread):
    assert list(TASKS) == ["vcot", "shuffle", "iraven"]  # the order `python -m evalsuite all` runs them in
    ckpt = make_adapter(tiny_model("llava", tmp_path_factory), tmp_path / "ckpt" / "run", seed=5)
    cfg, cache = fast_config(limit=2, frames=(3,)), tmp_path / "ckpt" / ".infill_cache"
    evaluate([checkpoint_ref(ckpt)], ["vcot"], cfg, cache)
    infills = sorted(cache.glob("*.jsonl"))
    before = [p.read_text() for p in infills]
    results = evaluate([checkpoint_ref(ckpt)], list(TASKS), cfg, cache)[str(ckpt)]
    assert [p.read_text() for p in infills] == before  # shuffle generated nothing: all cache hits
    rows = read_rows(ckpt / "eval/shuffle/predictions.jsonl")
    assert Counter(r["condition"] for r in rows) == {"vcot": 2, "text": 2, "visual": 2, "words": 2, "order": 2}
    vcot = {r["item"]: r["texts"] for r in read_rows(ckpt / "eval/vcot/predictions.jsonl") if r["condition"] == "vcot"}
    for r in rows:  # the vcot infills, the same texts: partners lend exactly what vcot generated
        if r["condition"] == "order":  # the same texts in another order
            assert sorted(r["texts"]) == sorted(vcot[r["infills_from"]])
        else:
            assert r["texts"] == vcot[r["infills_from"]] or r["condition"] == "words"
    iraven = read_rows(ckpt / "eval/iraven/predictions.jsonl")
    assert len(iraven) == 2 * 7 and all(r["image_size"] == 64 and len(r["logliks"]) == 8 for r in iraven)
    for task in ("shuffle", "iraven"):
        metrics = json.loads((ckpt / f"eval/{task}/metrics.json").read_text())
        assert metrics["metrics"] == results[task]["metrics"] and metrics["n_rows"] == len(read_rows(
            ckpt / f"eval/{task}/predictions.jsonl"))
    assert results["iraven"]["metrics"]["n_items"] == 14
    assert len(list(cache.glob("iraven/seed2026_n2/*/RAVEN_*_test.npz"))) == 14

    def no_load(self):
        raise AssertionError("a finished evaluation loaded its checkpoint")

    monkeypatch.setattr(evalsuite.resources.Subject, "_load", no_load)
    again = evaluate([checkpoint_ref(ckpt)], list(TASKS), cfg, cache)[str(ckpt)]
    assert {t: m["metrics"] for t, m in again.items()} == {t: m["metrics"] for t, m in results.items()}
