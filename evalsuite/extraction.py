"""Which option a free-form answer chose: letter, then unique option text, then an optional judge.

An answer that none of these resolves is a recorded failure (`choice is None`), never a random guess;
the suite reports the share of failures per condition.

    extract_choice("Answer: (B)", options)          -> Extraction(1, "letter")
    extract_choice("I think it moves up.", options) -> Extraction(3, "text")   # if unique
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

LETTERS = "ABCDE"
# A bare letter, "(B)", "B.", "B)", "B:" at the start: but not "A red circle" (an article).
_LEADING = re.compile(r"^\s*[\(\[]?([A-E])(?:[\)\]]|[.:,](?!\w)|\s*$)")
_LEADING_PAREN = re.compile(r"^\s*[\(\[]([A-E])[\)\]]")
# "Answer: B", "the answer is (C)", "Option D", "correct option: E."
_ANSWER_IS = re.compile(r"\b(?:answer|option|choice)\s*(?:is|:|=|-)?\s*[\(\[]?([A-E])\b(?![a-z'])", re.IGNORECASE)


@dataclass(frozen=True)
class Extraction:
    choice: int | None
    method: str
    """`letter`, `text`, `judge` or `failed`."""


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def letter_choice(answer: str) -> int | None:
    for pattern in (_LEADING_PAREN, _LEADING, _ANSWER_IS):
        m = pattern.search(answer)
        if m:
            letter, rest = m.group(1), answer[m.end():].lstrip()
            # "the answer is a circle" must not read as option A: a lower-case letter counts only
            # when nothing but punctuation follows it ("answer: e").
            if letter.isupper() or not rest or rest[0] in ".)]:;,":
                return LETTERS.index(letter.upper())
    return None


def text_choice(answer: str, options: list[str]) -> int | None:
    """The option whose text the answer contains, if exactly one (longest match wins over its own prefixes)."""
    norm = _normalize(answer)
    opts = [_normalize(o) for o in options]
    exact = [i for i, o in enumerate(opts) if o and o == norm]
    if len(exact) == 1:
        return exact[0]
    hits = [i for i, o in enumerate(opts) if o and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", norm)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        longest = max(hits, key=lambda i: len(opts[i]))
        if all(opts[i] in opts[longest] for i in hits) and sum(len(opts[i]) == len(opts[longest]) for i in hits) == 1:
            return longest
    return None


def extract_choice(answer: str, options: list[str], judge: Callable[[str], str] | None = None) -> Extraction:
    """Letter, then text, then `judge(answer) -> judge's reply` read for a letter, else a failure."""
    letter = letter_choice(answer)
    if letter is not None:
        return Extraction(letter, "letter")
    text = text_choice(answer, options)
    if text is not None:
        return Extraction(text, "text")
    if judge is not None and answer.strip():
        verdict = letter_choice(judge(answer))
        if verdict is not None:
            return Extraction(verdict, "judge")
    return Extraction(None, "failed")
