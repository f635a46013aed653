"""Every prompt the evaluation suite writes, in one place.

The question block is exactly the training format (`data_recipes.synthetic.format_mc`: the question,
then "A. ..." to "E. ..." one per line) after the frames, and the expected assistant answer is the
option *text*, so a finetuned model is asked the way it was taught. The conditions differ in what
sits before the question:

    base       [img, img, ..., img, question]
    caption    [img, caption 1, img, caption 2, ..., img, caption F, question]
    vcot       [img, infill 1-2, img, infill 2-3, ..., img, question]
    blind      [question]                                  (no frames, no infills: the options alone)
    text_only  [infill 1-2, infill 2-3, ..., question]     (the infills without their frames)
    reversed   [img, img, ..., img, question]              (base's layout; the task feeds the frames last to first)

`blind` and `text_only` separate what the words alone give from what the frames add: a model that answers
from option wording scores above chance under `blind`, one that reads the infills as a story scores well
under `text_only` without ever seeing a frame. `text_only` is laid out as the base stage's reading items
(each text a part of its own, `INTERLEAVED`, then the question block), so the finetuned models have seen
that shape. `reversed` asks whether the model uses the frames' order at all: on a temporal item it should
then pick the option the time-reversed clip would have.

Infills come from two questions about each pair of consecutive frames (what they have in common,
then what happened in between given that answer), optionally shortened by a text model.
`PROMPTS_HASH` changes whenever any template here changes; it is part of the infill cache key and of
the settings a finished evaluation is matched against.

The paper's protocol (`--protocol paper`) generates the answer: the question block then gets one more
line, `ANSWER_LETTER`, asking for the option's letter. An answer that the rules of
`evalsuite.extraction` cannot map to an option goes to a local chat judge with `JUDGE`, which follows
the logic of VLMEvalKit's multiple-choice matching prompt: the judge sees the question, the options and
the model's answer, two worked examples (one answer that matches an option, one that matches none), and
replies with one letter, or Z when the answer fits no option (a recorded failure, never a guess).
`ANSWER_HASH` and `JUDGE_HASH` follow these two texts into the settings.
"""

from __future__ import annotations

import hashlib

from data_recipes.synthetic import format_mc
from data_recipes.synthetic.language import INTERLEAVED

COMMON = "What do these two frames have in common? Answer in one sentence."
BETWEEN = ("The two frames have this in common: {common}\n"
           "What happened between the first frame and the second frame? Answer in one sentence.")
DESCRIBE = "Describe the image in one sentence."
REPHRASE = ("Shorten this description of what happens between two video frames to one short sentence. "
            "Reply with the sentence only.\n{text}")
ANSWER_LETTER = "Answer with the option's letter from the given choices directly."
"""Appended to the question block under `--protocol paper` (generate scoring): the usual instruction of
multiple-choice video benchmarks, so a model answers with a letter that extraction can read."""
JUDGE = ("Your job is to decide which option of a single-choice question a given answer stands for. "
         "You will see the question, its options and the answer someone gave. Pick the option whose meaning "
         "is closest to the answer. If the answer means something clearly different from every option, or "
         "picks no option at all, reply Z. Reply with one capital letter only: {letters} or Z.\n\n"
         "Example 1:\n"
         "Question: What is the person holding?\n"
         "Options:\nA. a cup\nB. a phone\nC. a knife\nD. a book\nE. nothing\n"
         "Answer: She has a mobile phone in her hand.\n"
         "Your reply: B\n\n"
         "Example 2:\n"
         "Question: What is the person holding?\n"
         "Options:\nA. a cup\nB. a phone\nC. a knife\nD. a book\nE. nothing\n"
         "Answer: The weather is sunny.\n"
         "Your reply: Z\n\n"
         "Now you:\n"
         "Question: {question}\n"
         "Options:\n{options}\n"
         "Answer: {answer}\n"
         "Your reply:")
# INTERLEAVED (imported above, the training data's own): what goes after a frame, an infill or a caption,
# closed by a newline so that the next frame (or the question) starts on a line of its own.

CONDITIONS = ("base", "caption", "vcot", "blind", "text_only", "reversed")
"""Every condition `user_content` lays out, in the order a vCoT evaluation asks them."""
FRAMELESS = ("blind", "text_only")
"""Conditions whose prompt shows no frame."""

PROMPTS_HASH = hashlib.sha256("\x00".join([COMMON, BETWEEN, DESCRIBE, REPHRASE, INTERLEAVED]).encode()).hexdigest()[:12]
JUDGE_HASH = hashlib.sha256(JUDGE.encode()).hexdigest()[:12]
ANSWER_HASH = hashlib.sha256(ANSWER_LETTER.encode()).hexdigest()[:12]


def _image() -> dict:
    return {"type": "image"}


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def question_block(question: str, options: list[str]) -> str:
    return format_mc(question, options)


def user_content(condition: str, n_frames: int, question: str, options: list[str],
                 texts: list[str] | None = None, instruction: str | None = None) -> list[dict]:
    """The user turn of one condition; `texts` are the F captions (caption) or the F-1 infills (vcot,
    text_only), None otherwise; `instruction` (e.g. `ANSWER_LETTER`) is one more line after the options.

    `reversed` has base's layout: which frame fills which marker (last first) is the caller's business."""
    content: list[dict] = []
    if condition in ("base", "reversed"):
        content = [_image() for _ in range(n_frames)]
    elif condition == "blind":
        content = []
    elif condition == "caption":
        if texts is None or len(texts) != n_frames:
            raise ValueError(f"caption condition needs {n_frames} captions, got {None if texts is None else len(texts)}")
        for caption in texts:
            content += [_image(), _text(INTERLEAVED.format(text=caption.strip()))]
    elif condition == "vcot":
        if texts is None or len(texts) != n_frames - 1:
            raise ValueError(f"vcot condition needs {n_frames - 1} infills, got {None if texts is None else len(texts)}")
        for infill in texts:
            content += [_image(), _text(INTERLEAVED.format(text=infill.strip()))]
        content.append(_image())
    elif condition == "text_only":
        if texts is None or len(texts) != n_frames - 1:
            got = None if texts is None else len(texts)
            raise ValueError(f"text_only condition needs {n_frames - 1} infills, got {got}")
        content = [_text(INTERLEAVED.format(text=infill.strip())) for infill in texts]
    else:
        raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    block = question_block(question, options)
    return content + [_text(f"{block}\n{instruction}" if instruction else block)]


def conversation(content: list[dict]) -> list[dict]:
    return [{"role": "user", "content": content}]


def answer_turn(option_text: str) -> dict:
    """The assistant turn scored by loglik: the option text, as in training."""
    return {"role": "assistant", "content": [_text(option_text)]}


def common_prompt() -> list[dict]:
    return [_image(), _image(), _text(COMMON)]


def between_prompt(common: str) -> list[dict]:
    return [_image(), _image(), _text(BETWEEN.format(common=common.strip()))]


def describe_prompt() -> list[dict]:
    return [_image(), _text(DESCRIBE)]


def rephrase_prompt(text: str) -> list[dict]:
    return [_text(REPHRASE.format(text=text.strip()))]


def judge_prompt(question: str, options: list[str], answer: str) -> list[dict]:
    """The judge's user turn for one answer (`JUDGE`: letters A.. for the options, Z for none of them)."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    listed = "\n".join(f"{letter}. {option.strip()}" for letter, option in zip(letters, options))
    return [_text(JUDGE.format(letters=", ".join(letters), question=question.strip(), options=listed,
                               answer=answer.strip()))]
