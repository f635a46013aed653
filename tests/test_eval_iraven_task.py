"""The I-RAVEN task: the composite image (pixels), the three layouts, letters, yes/no judgements of
each candidate, the data it evaluates, accuracy per configuration and answer-position bias (and whether
the accuracy is informative) against hand-computed rows, and the candidates layout end to end."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

import evalsuite.tasks.iraven as iraven_mod
from evalsuite import prompts
from evalsuite.config import ConfigError
from evalsuite.benchmarks.iraven import CONFIG_NAMES, generate_item, item_rng
from evalsuite.prompts import (iraven_composite_image, iraven_composite_layout, iraven_image_size,
                               iraven_letter_choice)
from evalsuite.resources import Resources
from evalsuite.scoring import OptionScores
from evalsuite.tasks.iraven import IRavenTask
from helpers import fast_config, tiny_model


@pytest.fixture(scope="module")
def puzzle():
    return generate_item("distribute_four", item_rng(2026, "distribute_four", 1)).image


def _crop(img, box, inset=4):  # inside the drawn frame
    return np.asarray(img.convert("L"))[box[1] + inset:box[3] - inset, box[0] + inset:box[2] - inset]


def test_composite_shows_the_grid_a_question_mark_and_lettered_candidates(puzzle):
    same = puzzle.copy()
    same[8:] = puzzle[8]  # eight identical candidates: only their letters can tell them apart
    lay, img = iraven_composite_layout(), iraven_composite_image(same)
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

    small = iraven_composite_image(same, 336)
    assert small.size == (336, 336)
    scale = 336 / lay["side"]
    scaled = [tuple(round(v * scale) for v in b) for b in lay["labels"]]
    assert len({_crop(small, b, inset=1).tobytes() for b in scaled}) == 8  # still eight letters after the resize


def test_iraven_prompt_texts_are_unchanged():
    """The templates' hash, computed from evalsuite/raven_prompt.py's RAVEN_HASH before its prompts moved into
    evalsuite/prompts.py's I-RAVEN section: the move changed no text (finished evaluations' settings hold it)."""
    assert prompts.IRAVEN_HASH == "aa88d75c5dc1"


def test_user_content_of_each_layout():
    composite, separate = prompts.iraven_user_content("composite"), prompts.iraven_user_content("separate")
    assert [p["type"] for p in composite].count("image") == 1
    assert [p["type"] for p in separate].count("image") == 16
    candidates = prompts.iraven_user_content("candidates")
    assert [p["type"] for p in candidates] == ["image"] * 9 + ["text"]  # the nine panels, then the question
    assert candidates[-1]["text"] == prompts.IRAVEN_CANDIDATE_QUESTION and "yes or no" in candidates[-1]["text"]
    assert prompts.IRAVEN_LAYOUTS == ("composite", "separate", "candidates")
    assert fast_config(iraven_layout="candidates").iraven_layout == "candidates"
    letters = [p["text"].strip(": ") for p in separate if p["type"] == "text" and p["text"].endswith(": ")]
    assert letters == list("ABCDEFGH")
    with pytest.raises(ValueError, match="unknown I-RAVEN layout"):
        prompts.iraven_user_content("grid")
    with pytest.raises(ConfigError, match="Did you mean 'separate'"):
        fast_config(iraven_layout="seperate")


def test_model_image_size():
    ip = SimpleNamespace
    assert iraven_image_size(ip(image_processor=ip(size={"shortest_edge": 336}, do_center_crop=True,
                                                   crop_size={"height": 336, "width": 336}))) == 336
    assert iraven_image_size(ip(image_processor=ip(size={"height": 384, "width": 384}))) == 384
    qwen = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}  # a pixel budget, not an edge
    assert iraven_image_size(ip(image_processor=ip(size=qwen, merge_size=2))) == prompts.IRAVEN_DYNAMIC_SIZE
    tiny = {"shortest_edge": 64 * 64, "longest_edge": 64 * 64}
    assert iraven_image_size(ip(image_processor=ip(size=tiny, merge_size=2))) == 64


@pytest.mark.parametrize("answer, expected", [
    ("C", 2), ("(D)", 3), ("H.", 7), ("The answer is F.", 5), ("Answer: G", 6), ("Candidate (B)", 1),
    ("A red square", None), ("the answer is a circle", None),
    ("I think so", None), ("", None), ("J", None),
    # shapes chat models write that were once unreadable (a failure, counted wrong)
    ("C\nThe third row repeats the first.", 2), ("The answer is: C", 2), ("**C**", 2), ("**Answer: E**", 4),
    ("c.", 2), ("(h)", 7), ("a", 0), ("A\nbecause the shapes grow", 0),
    ("a red square", None), ("c is the one", None)])
def test_letter_choice(answer, expected):
    assert iraven_letter_choice(answer) == expected


@pytest.mark.parametrize("answer, expected", [
    ("yes.", True), ("no.", False), ("Yes, they do.", True), (" No", False), ('"yes"', True),
    ("not really", None), ("yesterday", None), ("nothing", None), ("", None), ("the answer is yes", None)])
def test_judgement_reads_the_leading_yes_or_no(answer, expected):
    assert prompts.iraven_judgement(answer) is expected


def test_best_margin_and_single_yes():
    assert prompts.iraven_best_margin([0.1, -2.0, 3.5, 3.5, 0.0, -1.0, 2.0, 3.4]) == 2  # a tie goes to the lower index
    assert prompts.iraven_best_margin([-5.0, -4.0, -3.0, -2.0, -1.0, -0.5, -0.2, -0.1]) == 7  # all "no": the least sure
    with pytest.raises(ValueError, match="one margin per candidate"):
        prompts.iraven_best_margin([1.0, 2.0])
    no, yes = False, True
    assert prompts.iraven_single_yes([no, no, no, yes, no, no, no, no]) == 3
    assert prompts.iraven_single_yes([no] * 8) is None
    assert prompts.iraven_single_yes([yes, no, no, yes, no, no, no, no]) is None  # two yeses cannot be ranked
    assert prompts.iraven_single_yes([None, None, yes, None, None, None, None, None]) == 2


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


def test_official_directory_test_split(tmp_path, iraven_reference):
    task = _task(tmp_path, limit=1, iraven_data=str(iraven_reference))
    items = task.items()
    assert len(items) == 7
    assert all(p.path.parent.parent == iraven_reference and p.id.endswith("_test") for p in items)
    assert task.settings({"fingerprint": "x"})["data"] == str(iraven_reference.resolve())
    assert not (tmp_path / "cache" / "iraven").exists()


@pytest.mark.parametrize("layout", ["composite", "separate"])
def test_predict_scores_the_eight_letters_of_the_puzzle(tmp_path, monkeypatch, layout):
    task = _task(tmp_path, limit=1, iraven_layout=layout)
    item = task.items()[0]
    target = int(np.load(item.path)["target"])
    seen = []

    def score(model, processor, content, images, options, option_batch_bytes=None):
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


def _processor(size):
    return SimpleNamespace(image_processor=SimpleNamespace(size={"height": size, "width": size}))


def test_candidates_layout_shows_each_completed_matrix_in_reading_order(tmp_path):
    task = _task(tmp_path, limit=1)
    panels = np.load(task.items()[0].path)["image"]  # (16, 160, 160): 8 context panels, then 8 candidates
    for c in (0, 5, 7):
        native = prompts.iraven_candidate_images(panels, c)
        assert len(native) == 9 and all(im.mode == "RGB" and im.size == (160, 160) for im in native)
        assert [np.asarray(im.convert("L")).tobytes() for im in native] == \
            [p.tobytes() for p in list(panels[:8]) + [panels[8 + c]]]
    small = [prompts.iraven_candidate_images(panels, c, 64) for c in range(8)]
    assert all(im.size == (64, 64) for imgs in small for im in imgs)
    first8 = {b"".join(im.tobytes() for im in imgs[:8]) for imgs in small}
    assert len(first8) == 1  # every candidate's prompt shows the same context ...
    distinct = len({panels[8 + c].tobytes() for c in range(8)})
    assert len({imgs[8].tobytes() for imgs in small}) == distinct  # ... and its own ninth panel
    with pytest.raises(ValueError, match="candidate must be 0..7"):
        prompts.iraven_candidate_images(panels, 8)


def _ninth(images, panels) -> int:
    """Which candidate a prompt's ninth (native-size) image shows."""
    ninth = np.asarray(images[8].convert("L"))
    (c,) = [c for c in range(8) if np.array_equal(ninth, panels[8 + c])]
    return c


def test_candidates_loglik_scores_yes_and_no_per_candidate_and_picks_the_largest_margin(tmp_path, monkeypatch):
    task = _task(tmp_path, limit=1, iraven_layout="candidates", option_batch_mb=2)
    item = task.items()[0]
    panels, target = np.load(item.path)["image"], int(np.load(item.path)["target"])
    wanted = (target + 3) % 8  # the fake model's favourite, not the answer: pred must follow the margins
    calls = []

    def score(model, processor, content, images, options, option_batch_bytes=None):
        assert option_batch_bytes == 2 * 2**20  # --option_batch_mb reaches the scoring
        c = _ninth(images, panels)
        calls.append((c, options, len(images), sum(p["type"] == "image" for p in content)))
        yes, no = -1.0 - 0.1 * c, -2.0 + (3.0 if c == wanted else 0.0)  # margins 1 - 0.1 c, except `wanted`
        return OptionScores([yes, no], [2, 2])

    monkeypatch.setattr(iraven_mod, "score_options", score)
    (row,) = task.predict(SimpleNamespace(model=None, processor=_processor(160)), item, [item.id])
    assert [c for c, *_ in calls] == list(range(8))  # each candidate judged once, in order
    assert all(o == ["yes.", "no."] and n == k == 9 for _, o, n, k in calls)
    expected = [1.0 - 0.1 * c - (3.0 if c == wanted else 0.0) for c in range(8)]
    assert row["margins"] == pytest.approx(expected) and len(row["logliks"]) == 8
    best = 0 if wanted != 0 else 1  # the largest margin: candidate 0, unless it is the one pushed down
    assert row["pred"] == best and row["answer"] == target and row["correct"] == (best == target)
    assert row["layout"] == "candidates" and row["image_size"] == 160


def test_candidates_generate_takes_the_single_yes(tmp_path, monkeypatch):
    task = _task(tmp_path, limit=1, iraven_layout="candidates", scoring="generate")
    item = task.items()[0]
    panels, target = np.load(item.path)["image"], int(np.load(item.path)["target"])
    yes_to = {target}

    def generate(contents, images, max_new_tokens, batch_size, lengths):
        assert len(contents) == len(images) == 8 and all(len(imgs) == 9 for imgs in images)
        lengths += [100 + i for i in range(len(contents))]
        return ["yes." if _ninth(imgs, panels) in yes_to else "no, they do not." for imgs in images]

    subject = SimpleNamespace(model=None, processor=_processor(160), chat=SimpleNamespace(generate=generate))
    (row,) = task.predict(subject, item, [item.id])
    assert row["pred"] == target and row["correct"] and row["extraction"] == "single yes"
    assert row["sequence_tokens"] == 107  # the longest candidate's
    assert row["judgements"] == [c == target for c in range(8)]
    yes_to.add((target + 1) % 8)  # two yeses: a recorded failure, never a guess
    (row,) = task.predict(subject, item, [item.id])
    assert row["pred"] is None and not row["correct"] and row["extraction"] == "failed"


def test_candidates_plan_counts_eight_prompts_per_puzzle(tmp_path):
    for scoring, forwards, generations in (("loglik", 2 * 8 * 3, 0), ("generate", 0, 2 * 8)):
        task = _task(tmp_path, limit=1, iraven_layout="candidates", scoring=scoring)
        work = [(p, [p.id]) for p in task.items()[:2]]
        w = task.plan(None, work, set())
        assert (w.items, w.prompts, w.forwards, w.generations) == (2, 16, forwards, generations)
    letters = _task(tmp_path, limit=1).plan(None, work, set())
    assert (letters.prompts, letters.forwards) == (2, 2 * 9)  # composite: one prompt, eight letters


def test_a_model_that_always_says_yes_to_the_first_candidate_is_not_informative(tmp_path, monkeypatch):
    task = _task(tmp_path, limit=2, iraven_layout="candidates")
    shown = {}  # the panels of the puzzle being predicted

    # "yes." for the candidate in slot 0, whatever it shows
    def score(model, processor, content, images, options, option_batch_bytes=None):
        c = _ninth(images, shown["panels"])
        return OptionScores([-0.1, -3.0] if c == 0 else [-3.0, -0.1], [2, 2])

    monkeypatch.setattr(iraven_mod, "score_options", score)
    rows = []
    for item in task.items():
        shown["panels"] = np.load(item.path)["image"]
        rows += task.predict(SimpleNamespace(model=None, processor=_processor(160)), item, [item.id])
    s = task.summarize(rows)
    targets = [r["answer"] for r in rows]
    assert all(r["pred"] == 0 for r in rows)
    assert s["acc"]["value"] == pytest.approx(targets.count(0) / len(rows))  # accuracy = slot 0's share of targets
    assert s["position_bias"]["value"] == 1.0 and s["position_bias"]["index"] == 0
    assert s["informative"] is False
    assert s["informative_reason"].startswith(f"answers sit on candidate A in 100% of the {len(rows)} answered puzzles")
    assert task.flat_metrics(s)["iraven/informative"] == 0.0 and "NOT INFORMATIVE" in task.headline(s)


def test_informative_when_no_candidate_takes_more_than_half_the_answers(tmp_path):
    task = _task(tmp_path)
    pairs = [(0, 0), (1, 1), (2, 5), (3, 3), (4, 0), (5, 2), (6, 6), (7, 1)]  # (target, predicted)
    balanced = [_row("center_single", t, p) for t, p in pairs]
    s = task.summarize(balanced)
    assert s["position_bias"] == {"value": 0.25, "n": 8, "index": 0, "letter": "A", "target_share": 0.125}
    assert s["informative"] is True and "informative_reason" not in s and "NOT INFORMATIVE" not in task.headline(s)
    assert task.flat_metrics(s)["iraven/informative"] == 1.0
    half = [_row("center_single", t, 2 if t < 4 else t) for t in range(8)]  # 4 of 8 on C: the boundary
    assert task.summarize(half)["informative"] is True
    over = half + [_row("center_single", 0, 2)]  # 5 of 9
    s = task.summarize(over)
    assert s["informative"] is False and "candidate C in 56% of the 9 answered puzzles" in s["informative_reason"]
    failed = task.summarize([_row("center_single", 1, None)])
    assert failed["informative"] is False and "no puzzle got a readable answer" in failed["informative_reason"]


def test_a_generate_run_whose_answers_are_mostly_unreadable_is_not_informative(tmp_path):
    """Generate scoring counts an answer no rule reads as wrong. When that is most puzzles, the accuracy
    measures how the run words its answers (an image and a video run may word them differently), so F3 must
    not read it: the run is uninformative, with the failure share as the reason."""
    from evalsuite.report.evaluation import uninformative_reason

    task = _task(tmp_path, scoring="generate")
    read = [_row("center_single", t, t if t % 2 else (t + 1) % 8) for t in range(4)]  # no position bias
    unread = [_row("center_single", t, None) for t in range(4, 9)]  # 5 of 9 unreadable
    s = task.summarize(read + unread)
    assert s["failed"] == {"value": 5 / 9, "n": 9, "count": 5}
    assert s["informative"] is False and s["uninformative_by"] == "failed"
    assert "no rule could read the answer to 56% of the 9 puzzles" in s["informative_reason"]
    assert uninformative_reason(s) == s["informative_reason"]
    assert task.summarize(read + unread[:4])["informative"] is True  # 4 of 8: the boundary
    loglik = _task(tmp_path / "loglik", scoring="loglik").summarize(read + unread)
    assert "failed" not in loglik and "uninformative_by" not in loglik


def test_candidates_layout_end_to_end_on_a_tiny_model(tmp_path, tmp_path_factory, one_thread):
    from evalsuite.cli import main
    from evalsuite.outputs import read_rows

    model = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "models" / "tiny-llava")
    assert main(["iraven", str(model), "--iraven-layout", "candidates", "--iraven-limit", "2", "--n-boot", "100",
                 "--no-tracking", "--no-progress"]) == 0
    result = json.loads((model / "eval/iraven/metrics.json").read_text())
    assert result["settings"]["layout"] == "candidates" and result["settings"]["prompts"] == prompts.IRAVEN_HASH
    m = result["metrics"]
    rows = read_rows(model / "eval/iraven/predictions.jsonl")
    assert m["n_items"] == len(rows) == 2 * len(CONFIG_NAMES)
    for r in rows:
        assert r["image_size"] == 64 and len(r["margins"]) == 8 and len(r["logliks"]) == 8
        assert r["margins"] == pytest.approx([yes - no for yes, no in r["logliks"]])
        assert r["pred"] == max(range(8), key=lambda i: (r["margins"][i], -i))
        assert r["correct"] == (r["pred"] == r["answer"])
    predicted = [sum(r["pred"] == i for r in rows) for i in range(8)]
    assert m["position"]["predicted"] == predicted
    assert m["acc"]["value"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    top = max(range(8), key=lambda i: (predicted[i], -i))
    assert m["position_bias"]["index"] == top
    assert m["position_bias"]["value"] == pytest.approx(predicted[top] / len(rows))
    assert m["informative"] is (predicted[top] / len(rows) <= 0.5)
    assert ("informative_reason" in m) is (not m["informative"])


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
    assert s["position_bias"] == {"value": 0.75, "letter": "A", "index": 0, "n": 4, "target_share": 0.2}
    assert s["informative"] is False and "candidate A in 75% of the 4 answered puzzles" in s["informative_reason"]
    flat = task.flat_metrics(s)
    assert flat["iraven/acc"] == pytest.approx(0.4) and flat["iraven/chance"] == 0.125
    assert flat["iraven/center_single/acc"] == pytest.approx(2 / 3) and "iraven/center_single/acc_ci_high" in flat
    assert flat["iraven/position_bias"] == 0.75 and flat["iraven/failed"] == pytest.approx(0.2)
    assert "iraven/distribute_nine/acc" not in flat and flat["iraven/n"] == 5
    assert "position bias 0.75 on A" in task.headline(s)
    assert task.flat_metrics(task.summarize([])) == {"iraven/n": 0.0, "iraven/chance": 0.125}
