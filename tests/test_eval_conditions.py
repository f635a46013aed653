"""The vCoT conditions that separate the explanations: blind, text_only and reversed prompts, blind scored
once per item, per-kind summaries and reversed-clip pick rates, the options-only floor, oracle_noisy
infills, and the shuffle task's `order` condition (no model runs: scoring is captured)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import evalsuite.tasks.vcot as vcot_mod
from data_recipes.synthetic import format_mc
from data_recipes.synthetic.language import INTERLEAVED
from evalsuite import comparisons, prompts
from evalsuite.config import ConfigError, EvalConfig, FrameInputs, InfillSpec
from evalsuite.infills import NoisyOracleSource, OracleSource
from evalsuite.perturb import shuffle_order
from evalsuite.resources import Resources
from evalsuite.scoring import OptionScores
from evalsuite.tasks.base import Workload
from evalsuite.tasks.shuffle import ShuffleTask
from evalsuite.tasks.vcot import CONTRASTS, REVERSED_PICKS, VCoTTask
from helpers import fast_config

OPTIONS = ["it moves left", "it moves up", "it turns red", "it disappears", "it grows"]
QUESTION = "what happens to the circle?"


# ------------------------------------------------------------------------------------- prompt layouts

def test_blind_is_the_question_block_alone_and_the_same_for_every_f():
    for f in (2, 5, 10):
        content = prompts.user_content("blind", f, QUESTION, OPTIONS)
        assert content == [{"type": "text", "text": format_mc(QUESTION, OPTIONS)}]
    with_letter = prompts.user_content("blind", 5, QUESTION, OPTIONS, instruction=prompts.ANSWER_LETTER)
    assert with_letter == [{"type": "text", "text": f"{format_mc(QUESTION, OPTIONS)}\n{prompts.ANSWER_LETTER}"}]


def test_text_only_is_the_infills_as_text_parts_then_the_question_and_no_image():
    infills = ["the red circle slides toward the left side.", " the picture stays the same. "]
    content = prompts.user_content("text_only", 3, QUESTION, OPTIONS, infills)
    assert content == [{"type": "text", "text": INTERLEAVED.format(text=infills[0])},
                       {"type": "text", "text": INTERLEAVED.format(text="the picture stays the same.")},
                       {"type": "text", "text": format_mc(QUESTION, OPTIONS)}]
    with pytest.raises(ValueError, match="text_only condition needs 2 infills, got 1"):
        prompts.user_content("text_only", 3, QUESTION, OPTIONS, infills[:1])
    with pytest.raises(ValueError, match="text_only condition needs 4 infills, got None"):
        prompts.user_content("text_only", 5, QUESTION, OPTIONS)


@pytest.mark.parametrize("index", [0, 1])  # F = 5 and F = 10 reading items
def test_text_only_is_exactly_the_layout_of_the_base_stage_reading_items(index):
    from data_recipes.synthetic.reading import reading_record

    record = reading_record(0, index)
    meta = record["meta"]
    content = prompts.user_content("text_only", len(meta["frames"]), meta["question"], meta["options"],
                                   meta["transitions"])
    assert content == record["messages"][0]["content"]


def test_reversed_has_base_layout():
    assert prompts.user_content("reversed", 4, QUESTION, OPTIONS) == prompts.user_content("base", 4, QUESTION, OPTIONS)
    assert [p["type"] for p in prompts.user_content("reversed", 4, QUESTION, OPTIONS)] == ["image"] * 4 + ["text"]
    assert set(prompts.CONDITIONS) >= {"base", "caption", "vcot", "blind", "text_only", "reversed"}


# ----------------------------------------------------------------- what each condition feeds the model

def _captured(tmp_path, monkeypatch, **cfg):
    """A vcot task over oracle infills whose scoring records every prompt and always picks option 0."""
    config = fast_config(infills="oracle", **cfg)
    task = VCoTTask(config, Resources(config, tmp_path))
    seen = []

    def score(model, processor, content, images, options, videos=None, image_options=None, video_fps=None,
              norm="mean", option_batch_bytes=None):
        seen.append({"content": content, "images": list(images), "videos": videos or []})
        return OptionScores([0.0] * len(options), [1] * len(options))

    monkeypatch.setattr(vcot_mod, "score_options", score)
    monkeypatch.setattr(vcot_mod, "frame_options", lambda processor: {})
    return task, seen


def _pixels(images):
    return [np.asarray(i).tolist() for i in images]


def test_each_condition_feeds_what_it_says_and_blind_is_scored_once(tmp_path, monkeypatch):
    from data_recipes.synthetic.narration import item_oracle_transition

    task, seen = _captured(tmp_path, monkeypatch, limit=2, frames=(3, 4))
    subject = SimpleNamespace(model=None, processor=None, inputs=FrameInputs("images", None))
    for item in task.items():
        seen.clear()
        rows = task.predict(subject, item, task.keys(item))
        assert [r["key"] for r in rows] == task.keys(item)
        # one prompt per row, except blind: once for the item, whatever the number of F
        assert len(seen) == len(rows) - (len(task.cfg.frames) - 1)
        prompted = [r for r in rows if "scored_with" not in r]
        by = {(r["frames"], r["condition"]): (r, s) for r, s in zip(prompted, seen)}
        blind = [r for r in rows if r["condition"] == "blind"]
        assert len(blind) == len(task.cfg.frames) and "scored_with" not in blind[0]
        for r in blind[1:]:
            assert r["scored_with"] == blind[0]["key"]
            assert {k: r[k] for k in ("pred", "logliks", "n_tokens", "correct")} == \
                   {k: blind[0][k] for k in ("pred", "logliks", "n_tokens", "correct")}
        (blind_prompt,) = [s for s in seen if not any(p["type"] == "image" for p in s["content"])
                           and len(s["content"]) == 1]
        assert blind_prompt["content"] == prompts.user_content("blind", 3, item.question, item.options)
        assert blind_prompt["images"] == [] and blind[0]["video_input"] == "none" and blind[0]["indices"] == []
        for f in task.cfg.frames:
            idx = task.bench.indices(item, f)
            oracle = [item_oracle_transition(item.meta, a, b) for a, b in zip(idx, idx[1:])]
            row, s = by[(f, "base")]
            assert row["indices"] == idx and _pixels(s["images"]) == _pixels(task.bench.frames(item, idx))
            row, s = by[(f, "reversed")]
            assert row["indices"] == idx[::-1] and row["video_input"] == "images"
            assert _pixels(s["images"]) == _pixels(task.bench.frames(item, idx))[::-1]
            assert s["content"] == prompts.user_content("base", f, item.question, item.options)
            row, s = by[(f, "text_only")]
            assert s["images"] == [] and row["texts"] == oracle and row["video_input"] == "none"
            assert s["content"] == prompts.user_content("text_only", f, item.question, item.options, oracle)
            row, s = by[(f, "vcot")]
            assert row["texts"] == oracle and len(s["images"]) == f
        assert {r["kind"] for r in rows} == {item.meta.get("kind") or "all"}
        if item.meta.get("reversed_answer") is not None:
            assert {r["reversed_answer"] for r in rows} == {item.meta["reversed_answer"]}
        else:
            assert not any("reversed_answer" in r for r in rows)


def test_native_feeds_base_and_reversed_as_clips_of_their_own_order(tmp_path, monkeypatch):
    task, seen = _captured(tmp_path, monkeypatch, limit=1, frames=(4,))
    subject = SimpleNamespace(model=None, processor=None, inputs=FrameInputs("native", None))
    assert task.video_inputs(subject.inputs) == {"base": "native", "caption": "images", "vcot": "images",
                                                 "blind": "none", "text_only": "none", "reversed": "native"}
    (item,) = task.items()
    rows = task.predict(subject, item, task.keys(item))
    idx = task.bench.indices(item, 4)
    clips = {r["condition"]: s for r, s in zip(rows, seen) if s["videos"]}
    assert set(clips) == {"base", "reversed"}
    assert _pixels(clips["base"]["videos"][0]) == _pixels(task.bench.frames(item, idx))
    assert _pixels(clips["reversed"]["videos"][0]) == _pixels(task.bench.frames(item, idx))[::-1]
    assert all(s["images"] == [] and {"type": "video"} in s["content"] for s in clips.values())


def test_plan_counts_blind_once_and_text_only_asks_for_infills(tmp_path):
    config = fast_config(infills="oracle", limit=2, frames=(3, 4))
    task = VCoTTask(config, Resources(config, tmp_path))
    subject = SimpleNamespace(inputs=FrameInputs("images", None))
    work = [(item, task.keys(item)) for item in task.items()]
    per_item = 2 * 5 + 1  # five conditions per F, blind once
    assert task.plan(subject, work, set()) == Workload(items=2, prompts=2 * per_item, forwards=2 * per_item * 6)
    # a resume that left only one F's blind row: still one prompt
    item = task.items()[0]
    assert VCoTTask.prompted([f"{item.id}|f4|blind"]) == [f"{item.id}|f4|blind"]
    # which conditions ask for transitions: text_only does, blind and reversed do not
    (pairs_all, caps_all) = task.infill_requests(item)
    assert len(pairs_all) == 2 + 3 and caps_all
    for only, wants_pairs in (("text_only", True), ("blind", False), ("reversed", False), ("base", False)):
        task.conditions = lambda only=only: (only,)
        pairs, captions = task.infill_requests(item)
        assert (pairs == pairs_all if wants_pairs else pairs == []) and captions == []


def test_settings_record_the_conditions(tmp_path):
    config = fast_config(infills="oracle", limit=1)
    vcot = VCoTTask(config, Resources(config, tmp_path)).settings({})
    assert vcot["conditions"] == list(prompts.CONDITIONS)
    assert vcot["video_input"]["blind"] == "none" and vcot["video_input"]["reversed"] == "images"
    shuffle = ShuffleTask(fast_config(infills="oracle", limit=2), Resources(config, tmp_path)).settings({})
    assert shuffle["conditions"] == ["vcot", "text", "visual", "words", "order"]


# ------------------------------------------------------------------------------------------ summaries

def _row(item, f, cond, pred, answer, kind, reversed_answer=None):
    row = {"item": item, "frames": f, "condition": cond, "pred": pred, "answer": answer, "kind": kind}
    if reversed_answer is not None:
        row["reversed_answer"] = reversed_answer
    return row


def test_per_kind_blocks_and_reversed_picks_by_hand():
    # four static items (no reversed answer) and four temporal ones (answer 1, reversed clip's option 3)
    correct = {  # per condition: which of s0..s3, t0..t3 are right
        "base":     [1, 1, 0, 0, 1, 0, 0, 0],
        "reversed": [1, 1, 0, 0, 0, 0, 0, 0],
    }
    wrong_pick = {"base": [None] * 4 + [None, 3, 3, 0], "reversed": [None] * 4 + [3, 3, 3, 2]}
    rows = []
    for cond, ok in correct.items():
        for k, good in enumerate(ok):
            static = k < 4
            item, answer = (f"s{k}", 2) if static else (f"t{k - 4}", 1)
            pred = answer if good else (wrong_pick[cond][k] if not static else 0)
            rows.append(_row(item, 5, cond, pred, answer, "static" if static else "temporal",
                             None if static else 3))
    rows.append(_row("t9", 5, "base", None, 1, "temporal", 3) | {"error": "broken"})  # never paired
    out = comparisons.summarize(rows, (5,), ("base", "reversed"), {"gain": ("reversed", "base")}, n_boot=100,
                                seed=0, reversed_picks=("base", "reversed"))
    assert set(out) == {"f5", "by_kind"} and set(out["by_kind"]) == {"static", "temporal"}
    assert out["f5"]["n_items"] == 8 and out["f5"]["acc_base"]["value"] == 3 / 8
    static, temporal = out["by_kind"]["static"]["f5"], out["by_kind"]["temporal"]["f5"]
    assert static["n_items"] == 4 and static["acc_base"]["value"] == 0.5 and static["acc_reversed"]["value"] == 0.5
    assert temporal["n_items"] == 4 and temporal["acc_base"]["value"] == 0.25 and temporal["acc_reversed"]["value"] == 0
    assert temporal["gain"]["value"] == pytest.approx(-0.25) and static["gain"]["value"] == 0
    # picks of option 3 among the temporal items: base t1, t2 -> 2/4; reversed t0, t1, t2 -> 3/4
    assert temporal["reversed_pick_base"]["value"] == 0.5 and temporal["reversed_pick_base"]["n"] == 4
    assert temporal["reversed_pick_reversed"]["value"] == 0.75
    assert out["f5"]["reversed_pick_reversed"] == temporal["reversed_pick_reversed"]  # only temporal items count
    assert "reversed_pick_base" not in static  # static items have no reversed clip option
    pick = temporal["reversed_pick_reversed"]
    assert pick["ci_low"] <= 0.75 <= pick["ci_high"] and set(pick) == {"value", "ci_low", "ci_high", "n"}


def test_rows_without_kinds_get_no_per_kind_blocks():
    rows = [_row(f"q{k}", 5, c, k % 2, 0, "all") for k in range(4) for c in ("base", "vcot")]
    rows += [{k: v for k, v in r.items() if k != "kind"} | {"item": r["item"] + "x"} for r in rows]
    out = comparisons.summarize(rows, (5,), ("base", "vcot"), {"gain": ("vcot", "base")}, n_boot=50, seed=0,
                                reversed_picks=("base",))
    assert list(out) == ["f5"] and "reversed_pick_base" not in out["f5"]


def test_vcot_summary_has_every_contrast_per_kind_and_the_floor(tmp_path, monkeypatch):
    from evalsuite.floors import options_only_floor, synthetic_fit_items

    task, _ = _captured(tmp_path, monkeypatch, limit=6, frames=(3,))
    subject = SimpleNamespace(model=None, processor=None, inputs=FrameInputs("images", None))
    rows = [r for item in task.items() for r in task.predict(subject, item, task.keys(item))]
    summary = task.summarize(rows)
    block = summary["f3"]
    for c in prompts.CONDITIONS:
        assert block[f"acc_{c}"]["n"] == 6
    for name, (a, b) in CONTRASTS.items():
        assert block[name]["value"] == pytest.approx(block[f"acc_{a}"]["value"] - block[f"acc_{b}"]["value"])
    assert set(CONTRASTS) == {"gain", "caption_gain", "vcot_vs_caption", "text_only_gain"}
    kinds = {item.meta.get("kind") for item in task.items()}
    assert set(summary.get("by_kind", {})) == kinds - {None}
    expected = options_only_floor(task.items(), synthetic_fit_items(task.cfg.seed), n_boot=task.cfg.n_boot,
                                  seed=task.cfg.seed)
    assert summary["floors"] == {"guesser": expected}
    flat = task.flat_metrics(summary)
    assert flat["vcot/floor/guesser"] == expected["value"]
    for kind, est in expected["by_kind"].items():
        assert flat[f"vcot/floor/guesser_{kind}"] == est["value"]
    headline = task.headline(summary)
    assert all(f"{c} " in headline for c in ("base", "vcot", "blind", "text_only")) and "gain" in headline
    assert "caption" not in headline and "reversed" not in headline


def test_flatten_names_nested_blocks_and_floors():
    est = {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 4}
    summary = {"f5": {"n_items": 4, "acc_base": est, "gain": est | {"p_value": 0.5}},
               "by_kind": {"temporal": {"f5": {"n_items": 2, "acc_base": est, "reversed_pick_base": est}},
                           "static": {"f5": {"n_items": 2, "acc_base": est}}},
               "floors": {"guesser": {"best": "longest", **est, "per_guesser": {"longest": 0.5},
                                      "by_kind": {"temporal": {"best": "prior", **est, "value": 0.4}}}}}
    flat = comparisons.flatten("vcot", summary)
    assert flat == {
        "vcot/f5/n": 4.0, "vcot/f5/acc_base": 0.5, "vcot/f5/acc_base_ci_low": 0.25, "vcot/f5/acc_base_ci_high": 0.75,
        "vcot/f5/gain": 0.5, "vcot/f5/gain_ci_low": 0.25, "vcot/f5/gain_ci_high": 0.75, "vcot/f5/gain_p": 0.5,
        "vcot/temporal/f5/n": 2.0, "vcot/temporal/f5/acc_base": 0.5, "vcot/temporal/f5/acc_base_ci_low": 0.25,
        "vcot/temporal/f5/acc_base_ci_high": 0.75, "vcot/temporal/f5/reversed_pick_base": 0.5,
        "vcot/temporal/f5/reversed_pick_base_ci_low": 0.25, "vcot/temporal/f5/reversed_pick_base_ci_high": 0.75,
        "vcot/static/f5/n": 2.0, "vcot/static/f5/acc_base": 0.5, "vcot/static/f5/acc_base_ci_low": 0.25,
        "vcot/static/f5/acc_base_ci_high": 0.75,
        "vcot/floor/guesser": 0.5, "vcot/floor/guesser_ci_low": 0.25, "vcot/floor/guesser_ci_high": 0.75,
        "vcot/floor/guesser_temporal": 0.4, "vcot/floor/guesser_temporal_ci_low": 0.25,
        "vcot/floor/guesser_temporal_ci_high": 0.75}
    assert REVERSED_PICKS == ("base", "reversed")


# -------------------------------------------------------------------------------------- infill sources

def test_oracle_noisy_parses_its_share_and_refuses_a_bad_one(tmp_path):
    assert InfillSpec.parse("oracle_noisy:0.25") == InfillSpec("oracle_noisy", p=0.25)
    assert str(InfillSpec.parse("oracle_noisy:.5")) == str(InfillSpec.parse("oracle_noisy:0.50")) == "oracle_noisy:0.5"
    for bad in ("oracle_noisy:1.5", "oracle_noisy:-0.1", "oracle_noisy:half", "oracle_noisy", "oracle_noisy:nan"):
        with pytest.raises(ConfigError, match=r"--infills oracle_noisy.*a number from 0 to 1"):
            EvalConfig(infills=bad)
    with pytest.raises(ConfigError, match="oracle_noisy:0.2 needs ground-truth transitions: synthetic benchmark only"):
        EvalConfig(benchmark="egoschema", data=".", infills="oracle_noisy:0.2")
    described = {Resources(EvalConfig(infills=s), tmp_path).describe_infills()
                 for s in ("oracle", "oracle_noisy:0", "oracle_noisy:0.25", "oracle_noisy:1")}
    assert len(described) == 4 and "oracle_noisy:0.25" in described


def test_oracle_noisy_zero_is_the_oracle_and_one_changes_every_pair(tmp_path):
    from data_recipes.synthetic.narration import is_corrupted

    config = fast_config(infills="oracle", limit=8, frames=(5, 10))
    task = VCoTTask(config, Resources(config, tmp_path))
    oracle, clean, noisy, half = OracleSource(), NoisyOracleSource(0.0), NoisyOracleSource(1.0), NoisyOracleSource(0.5)
    corrupted = 0
    for item in task.items():
        pairs = [p for f in config.frames for p in zip(task.bench.indices(item, f), task.bench.indices(item, f)[1:])]
        truth = oracle.transitions(item, pairs, {})
        assert clean.transitions(item, pairs, {}) == truth
        assert clean.captions(item, [3, 9], {}) == oracle.captions(item, [3, 9], {})
        wrong = noisy.transitions(item, pairs, {})
        assert all(wrong[p] != truth[p] for p in pairs)
        some = half.transitions(item, pairs, {})
        changed = {p for p in pairs if some[p] != truth[p]}
        assert changed == {p for p in pairs if is_corrupted(NoisyOracleSource.noise_key(item, p), *p, 0.5)}
        assert all(some[p] == wrong[p] for p in changed)  # a corrupted pair reads the same at any share
        corrupted += len(changed)
    assert corrupted > 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        NoisyOracleSource(2.0)


def test_oracle_noisy_reaches_the_prompts(tmp_path, monkeypatch):
    task, seen = _captured(tmp_path, monkeypatch, limit=1, frames=(5,))
    noisy_cfg = fast_config(infills="oracle_noisy:1", limit=1, frames=(5,))
    noisy_task = VCoTTask(noisy_cfg, Resources(noisy_cfg, tmp_path))
    subject = SimpleNamespace(model=None, processor=None, inputs=FrameInputs("images", None))
    (item,) = task.items()
    key = [f"{item.id}|f5|vcot"]
    clean, noisy = task.predict(subject, item, key)[0], noisy_task.predict(subject, item, key)[0]
    assert all(a != b for a, b in zip(clean["texts"], noisy["texts"])) and len(noisy["texts"]) == 4
    assert noisy_task.settings({})["infills"] == "oracle_noisy:1.0"


# ------------------------------------------------------------------------------ shuffle: infill order

@pytest.mark.parametrize("n", [2, 3, 4, 9])
def test_shuffle_order_is_never_the_identity_and_is_seeded(n):
    orders = [shuffle_order(n, f"0|item-{k}|f5|order") for k in range(50)]
    assert all(sorted(o) == list(range(n)) and o != list(range(n)) for o in orders)
    assert orders == [shuffle_order(n, f"0|item-{k}|f5|order") for k in range(50)]
    if n > 2:
        assert len({tuple(o) for o in orders}) > 1
    assert shuffle_order(1, "k") == [0] and shuffle_order(0, "k") == []


def test_shuffle_order_condition_permutes_own_infills_between_own_frames(tmp_path, monkeypatch):
    config = fast_config(infills="oracle", limit=3, frames=(3, 5))
    task = ShuffleTask(config, Resources(config, tmp_path))
    seen = []

    def score(model, processor, content, images, options, **kw):
        seen.append((content, images))
        return OptionScores([0.0] * len(options), [1] * len(options))

    monkeypatch.setattr(vcot_mod, "score_options", score)
    monkeypatch.setattr(vcot_mod, "frame_options", lambda processor: {})
    subject = SimpleNamespace(model=None, processor=None, inputs=FrameInputs("images", None))
    for item in task.items():
        seen.clear()
        rows = task.predict(subject, item, task.keys(item))
        by = {(r["frames"], r["condition"]): (r, s) for r, s in zip(rows, seen)}
        for f in config.frames:
            own, _ = by[(f, "vcot")]
            row, (content, images) = by[(f, "order")]
            assert row["order"] != list(range(f - 1)) and sorted(row["order"]) == list(range(f - 1))
            assert row["texts"] == [own["texts"][i] for i in row["order"]]
            assert [p["text"].strip() for p in content if p["type"] == "text"][:-1] == [t.strip() for t in row["texts"]]
            assert row["indices"] == own["indices"] and _pixels(images) == _pixels(by[(f, "vcot")][1][1])
            assert row["frames_from"] == row["infills_from"] == item.id
            assert row["kind"] == (item.meta.get("kind") or "all")


def test_shuffle_summary_has_drop_order_and_per_kind_blocks(tmp_path):
    config = fast_config(infills="oracle", limit=2, frames=(3,))
    task = ShuffleTask(config, Resources(config, tmp_path))
    ok = {"vcot": [1, 1, 1, 1], "text": [1, 0, 1, 1], "visual": [1, 1, 1, 1], "words": [1, 1, 1, 1],
          "order": [1, 0, 0, 1]}
    kinds = ["static", "static", "temporal", "temporal"]
    rows = [{"item": f"i{k}", "frames": 3, "condition": c, "answer": 1, "pred": 1 if v else 4, "kind": kinds[k]}
            for c, vs in ok.items() for k, v in enumerate(vs)]
    s = task.summarize(rows)
    assert s["f3"]["drop_order"]["value"] == 0.5 and s["f3"]["drop_text"]["value"] == 0.25
    assert s["by_kind"]["static"]["f3"]["drop_order"]["value"] == 0.5
    assert s["by_kind"]["temporal"]["f3"]["drop_order"]["value"] == 0.5
    assert s["by_kind"]["static"]["f3"]["drop_text"]["value"] == 0.5
    assert s["by_kind"]["temporal"]["f3"]["drop_text"]["value"] == 0.0
    assert "floors" not in s
    flat = task.flat_metrics(s)
    assert flat["shuffle/f3/drop_order"] == 0.5 and flat["shuffle/static/f3/drop_text"] == 0.5
    assert "order +0.500" in task.headline(s)
