"""The I-RAVEN task: the composite image (pixels), the two layouts, letters, the data it evaluates,
and accuracy per configuration and answer-position bias against hand-computed rows."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import evalsuite.tasks.iraven as iraven_mod
from evalsuite import raven_prompt
from evalsuite.config import ConfigError
from evalsuite.iraven import CONFIG_NAMES, generate_item, item_rng
from evalsuite.raven_prompt import composite_layout, letter_choice, model_image_size, render_composite
from evalsuite.resources import Resources
from evalsuite.scoring import OptionScores
from evalsuite.tasks.iraven import IRavenTask
from test_eval_support import fast_config

REF = Path(os.environ.get("IRAVEN_REFERENCE", "/work/shared/iraven_reference"))


@pytest.fixture(scope="module")
def puzzle():
    return generate_item("distribute_four", item_rng(2026, "distribute_four", 1)).image


def _crop(img, box, inset=4):  # inside the drawn frame
    return np.asarray(img.convert("L"))[box[1] + inset:box[3] - inset, box[0] + inset:box[2] - inset]


def test_composite_shows_the_grid_a_question_mark_and_lettered_candidates(puzzle):
    same = puzzle.copy()
    same[8:] = puzzle[8]  # eight identical candidates: only their letters can tell them apart
    lay, img = composite_layout(), render_composite(same)
    assert img.size == (lay["side"], lay["side"]) and img.mode == "RGB"
    for box, panel in zip(lay["cells"], puzzle[:8]):
        assert np.array_equal(_crop(img, box), panel[4:-4, 4:-4])
    cands = [_crop(img, b) for b in lay["candidates"]]
    assert all(np.array_equal(c, cands[0]) for c in cands)
    labels = [_crop(img, b, inset=0) for b in lay["labels"]]
    assert all(lab.min() < 128 for lab in labels)  # a dark glyph in every label band
    assert len({lab.tobytes() for lab in labels}) == 8  # ... and eight different ones
    question = _crop(img, lay["cells"][8])
    assert 0.02 < (question < 128).mean() < 0.5  # the missing cell holds a "?" (and is not filled)
    boxes = lay["cells"] + lay["candidates"] + lay["labels"]
    assert not any(a != b and a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3] for a in boxes for b in boxes)

    small = render_composite(same, 336)
    assert small.size == (336, 336)
    scale = 336 / lay["side"]
    scaled = [tuple(round(v * scale) for v in b) for b in lay["labels"]]
    assert len({_crop(small, b, inset=1).tobytes() for b in scaled}) == 8  # still eight letters after the resize


def test_user_content_of_each_layout():
    composite, separate = raven_prompt.user_content("composite"), raven_prompt.user_content("separate")
    assert [p["type"] for p in composite].count("image") == 1
    assert [p["type"] for p in separate].count("image") == 16
    letters = [p["text"].strip(": ") for p in separate if p["type"] == "text" and p["text"].endswith(": ")]
    assert letters == list("ABCDEFGH")
    with pytest.raises(ValueError, match="unknown I-RAVEN layout"):
        raven_prompt.user_content("grid")
    with pytest.raises(ConfigError, match="Did you mean 'separate'"):
        fast_config(iraven_layout="seperate")


def test_model_image_size():
    ip = SimpleNamespace
    assert model_image_size(ip(image_processor=ip(size={"shortest_edge": 336}, do_center_crop=True,
                                                  crop_size={"height": 336, "width": 336}))) == 336
    assert model_image_size(ip(image_processor=ip(size={"height": 384, "width": 384}))) == 384
    qwen = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}  # a pixel budget, not an edge
    assert model_image_size(ip(image_processor=ip(size=qwen, merge_size=2))) == raven_prompt.DYNAMIC_SIZE
    tiny = {"shortest_edge": 64 * 64, "longest_edge": 64 * 64}
    assert model_image_size(ip(image_processor=ip(size=tiny, merge_size=2))) == 64


@pytest.mark.parametrize("answer, expected", [
    ("C", 2), ("(D)", 3), ("H.", 7), ("The answer is F.", 5), ("Answer: G", 6), ("Candidate (B)", 1),
    ("A red square", None), ("the answer is a circle", None),
    ("I think so", None), ("", None), ("J", None)])
def test_letter_choice(answer, expected):
    assert letter_choice(answer) == expected


def _task(tmp_path, **cfg):
    config = fast_config(**cfg)
    return IRavenTask(config, Resources(config, tmp_path / "cache"))


def test_generated_split_is_made_once_and_reused(tmp_path, monkeypatch):
    items = _task(tmp_path, limit=2).items()
    assert [p.config for p in items] == [c for c in CONFIG_NAMES for _ in range(2)]
    assert all(p.id.endswith("_test") and p.path.is_file() for p in items)
    monkeypatch.setattr(iraven_mod, "generate_dataset", lambda *a, **k: pytest.fail("generated twice"))
    assert _task(tmp_path, limit=2).items() == items  # a second checkpoint's task reads the same files
    assert not list((tmp_path / "cache" / "iraven").glob(".*"))  # no temporary copy left behind


@pytest.mark.skipif(not REF.is_dir(), reason="I-RAVEN reference files not present")
def test_official_directory_test_split(tmp_path):
    task = _task(tmp_path, limit=1, iraven_data=str(REF))
    items = task.items()
    assert len(items) == 7 and all(p.path.parent.parent == REF and p.id.endswith("_test") for p in items)
    assert task.settings({"fingerprint": "x"})["data"] == str(REF.resolve())
    assert not (tmp_path / "cache" / "iraven").exists()


@pytest.mark.parametrize("layout", ["composite", "separate"])
def test_predict_scores_the_eight_letters_of_the_puzzle(tmp_path, monkeypatch, layout):
    task = _task(tmp_path, limit=1, iraven_layout=layout)
    item = task.items()[0]
    target = int(np.load(item.path)["target"])
    seen = []

    def score(model, processor, content, images, options):
        seen.append((content, images, options))
        return OptionScores([1.0 if i == target else 0.0 for i in range(8)], [1] * 8)

    monkeypatch.setattr(iraven_mod, "score_options", score)
    processor = SimpleNamespace(image_processor=SimpleNamespace(size={"height": 96, "width": 96}))
    (row,) = task.predict(SimpleNamespace(model=None, processor=processor), item, [item.id])
    content, images, options = seen[0]
    assert options == list("ABCDEFGH") and row["pred"] == row["answer"] == target and row["correct"]
    assert sum(p["type"] == "image" for p in content) == len(images) == (1 if layout == "composite" else 16)
    if layout == "composite":
        assert images[0].size == (96, 96) and row["image_size"] == 96
    else:
        assert np.array_equal(np.asarray(images[8 + target].convert("L")), np.load(item.path)["image"][8 + target])


def _row(config, answer, pred, **extra):
    return {"item": f"{config}/{answer}-{pred}", "config": config, "answer": answer, "pred": pred,
            "correct": pred == answer, **extra}


def test_accuracy_per_config_and_position_bias_against_hand_computed_rows(tmp_path):
    task = _task(tmp_path, scoring="generate")
    rows = [_row("center_single", 0, 0), _row("center_single", 1, 0), _row("center_single", 2, 2),
            _row("distribute_four", 3, 0), _row("distribute_four", 4, None),
            _row("distribute_nine", 5, 5, error="unreadable file")]  # an error row counts nowhere
    s = task.summarize(rows)
    assert s["n_items"] == 5 and s["acc"]["value"] == pytest.approx(2 / 5) and s["chance"] == 0.125
    assert list(s["per_config"]) == ["center_single", "distribute_four"]
    assert s["per_config"]["center_single"]["value"] == pytest.approx(2 / 3)
    assert s["per_config"]["distribute_four"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 2}
    pos = s["position"]
    assert pos["predicted"] == [3, 0, 1, 0, 0, 0, 0, 0] and pos["target"] == [1, 1, 1, 1, 1, 0, 0, 0]
    assert pos["joint"][1][0] == 1 and pos["joint"][3][0] == 1 and sum(map(sum, pos["joint"])) == 4
    assert pos["failed"] == 1 and s["failed"]["value"] == pytest.approx(0.2)
    assert s["position_bias"] == {"value": 0.75, "letter": "A", "n": 4, "target_share": 0.2}
    flat = task.flat_metrics(s)
    assert flat["iraven/acc"] == pytest.approx(0.4) and flat["iraven/chance"] == 0.125
    assert flat["iraven/center_single/acc"] == pytest.approx(2 / 3) and "iraven/center_single/acc_ci_high" in flat
    assert flat["iraven/position_bias"] == 0.75 and flat["iraven/failed"] == pytest.approx(0.2)
    assert "iraven/distribute_nine/acc" not in flat and flat["iraven/n"] == 5
    assert "position bias 0.75 on A" in task.headline(s)
    assert task.flat_metrics(task.summarize([])) == {"iraven/n": 0.0, "iraven/chance": 0.125}
