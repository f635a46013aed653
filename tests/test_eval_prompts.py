"""Prompt structure of the conditions, answer extraction, and name checking (no models run)."""

from __future__ import annotations

import pytest

from data_recipes.synthetic import format_mc
from evalsuite import prompts
from evalsuite.cli import main as cli_main
from evalsuite.config import ConfigError, EvalConfig, InfillSpec
from evalsuite.extraction import extract_choice, letter_choice, text_choice
from evalsuite.tasks import get_task
from helpers import tiny_model

OPTIONS = ["it moves left", "it moves up", "it turns red", "it disappears", "it moves"]
QUESTION = "what happens to the circle?"


@pytest.mark.parametrize("n_frames", [2, 5, 10])
def test_vcot_prompt_has_f_images_and_f_minus_1_infills_in_order(n_frames):
    infills = [f"infill number {i}" for i in range(n_frames - 1)]
    content = prompts.user_content("vcot", n_frames, QUESTION, OPTIONS, infills)
    kinds = [p["type"] for p in content]
    assert kinds.count("image") == n_frames
    # image, text, image, text, ..., image, question: strictly alternating, question last
    assert kinds == ["image", "text"] * (n_frames - 1) + ["image", "text"]
    texts = [p["text"] for p in content if p["type"] == "text"]
    assert [t.strip() for t in texts[:-1]] == infills
    assert texts[-1] == format_mc(QUESTION, OPTIONS)  # the training format, exactly


def test_vcot_prompt_renders_in_order_through_the_chat_template(tmp_path_factory):
    from data_recipes.processors import load_processor
    from train.chat import render

    processor = load_processor(tiny_model("llava", tmp_path_factory))
    infills = ["alpha happens", "beta happens", "gamma happens"]
    content = prompts.user_content("vcot", 4, QUESTION, OPTIONS, infills)
    text = render(processor, prompts.conversation(content), add_generation_prompt=True)
    assert text.count("<image>") == 4
    positions = [text.index(s) for s in infills + ["A. it moves left"]]
    assert positions == sorted(positions)
    # every infill sits between two images
    for s in infills:
        before, after = text.split(s)
        assert before.rstrip().endswith("<image>") and after.lstrip().startswith("<image>")


def test_base_and_caption_prompts():
    base = prompts.user_content("base", 3, QUESTION, OPTIONS)
    assert [p["type"] for p in base] == ["image"] * 3 + ["text"]
    caps = ["c1", "c2", "c3"]
    cap = prompts.user_content("caption", 3, QUESTION, OPTIONS, caps)
    assert [p["type"] for p in cap] == ["image", "text"] * 3 + ["text"]
    assert [p["text"].strip() for p in cap[1:-1:2]] == caps
    with pytest.raises(ValueError, match="needs 2 infills"):
        prompts.user_content("vcot", 3, QUESTION, OPTIONS, ["only one"])
    assert prompts.answer_turn("it moves up")["content"][0]["text"] == "it moves up"


@pytest.mark.parametrize("answer, expected", [
    ("B", 1), ("(B)", 1), ("B.", 1), ("B) it moves up", 1), ("Answer: B", 1), ("The answer is (C).", 2),
    ("answer: e", 4), ("Option D", 3), ("E", 4), ("[A]", 0), ("A. it moves left", 0),
])
def test_letter_extraction(answer, expected):
    assert extract_choice(answer, OPTIONS).choice == expected
    assert extract_choice(answer, OPTIONS).method == "letter"


@pytest.mark.parametrize("answer, expected", [
    ("it turns red", 2), ("I think it moves up.", 1), ("It Disappears!", 3),
    ("it moves", 4),                       # exact match beats the longer options containing it
    ("the circle: it moves left, surely", 0),  # "it moves" is inside "it moves left": longest wins
])
def test_option_text_extraction(answer, expected):
    ext = extract_choice(answer, OPTIONS)
    assert (ext.choice, ext.method) == (expected, "text")


@pytest.mark.parametrize("garbage", ["", "JCCCCC", "A red circle", "it moves left or it turns red", "Apple",
                                     "the answer is a circle"])
def test_garbage_is_a_recorded_failure(garbage):
    assert letter_choice(garbage) is None
    ext = extract_choice(garbage, OPTIONS)
    assert ext.choice is None and ext.method == "failed"


def test_judge_is_asked_only_when_extraction_fails_and_is_read_for_a_letter():
    asked = []

    def judge(answer):
        asked.append(answer)
        return "C"

    assert extract_choice("B", OPTIONS, judge).method == "letter" and not asked
    ext = extract_choice("something red happens", OPTIONS, judge)
    assert (ext.choice, ext.method) == (2, "judge") and asked == ["something red happens"]
    assert extract_choice("zzz", OPTIONS, lambda a: "no idea").method == "failed"
    assert text_choice("it moves up and it turns red", OPTIONS) is None  # two different options: ambiguous


def test_unknown_names_answer_did_you_mean(capsys):
    with pytest.raises(ConfigError, match="Did you mean 'vcot'"):
        get_task("vcto")
    with pytest.raises(ConfigError, match="Did you mean 'egoschema'"):
        EvalConfig(benchmark="egoshema")
    with pytest.raises(ConfigError, match="Did you mean 'oracle'"):
        InfillSpec.parse("oracel")
    with pytest.raises(ConfigError, match="needs --data"):
        EvalConfig(benchmark="egoschema")
    with pytest.raises(ConfigError, match="synthetic benchmark only"):
        EvalConfig(benchmark="egoschema", data=".", infills="oracle")
    assert cli_main(["vcto", "ckpt"]) == 2
    assert "Did you mean 'vcot'" in capsys.readouterr().err
    assert cli_main(["all", "ckpt", "--benchmark", "synth"]) == 2
    assert "Did you mean 'synthetic'" in capsys.readouterr().err
