"""Which option a free-form answer chose: letter, then unique option text, then an optional judge.

An answer that none of these resolves is a recorded failure (`choice is None`), never a random guess;
the suite reports the share of failures per condition (and accuracy with failures counted wrong or as a
uniform guess, `evalsuite.comparisons`).

    extract_choice("Answer: (B)", options)          -> Extraction(1, "letter")
    extract_choice("I think it moves up.", options) -> Extraction(3, "text")   # if unique
    extract_choice("A or B", options)               -> Extraction(None, "failed", ambiguous=(0, 1))

Letters are read from the shapes real chat models produce, in this order of strength:

1. the answer's first line, after any role prefix a model echoes ("ASSISTANT:", "assistant" on its own
   line, chat special tokens) and an answer prefix ("Answer:", "The answer is", "Option"): a lone letter
   in either case ("b", "B"), bracketed ("(a)", "[C]"), or followed by punctuation ("D.", "E)", "B:") or
   by a line break and an explanation ("C\\nBecause ..."), or offered as an alternative to another letter
   ("a or b": both are claimed). A letter followed by a word is not read here:
   "A red circle moves" starts with an article, and EgoSchema's options call the camera wearer "C"
   ("C opens the fridge").
2. anywhere: "the answer is B", "answer: (c)", "my choice is D".
3. anywhere: "option C", "(B)", "[D]".
4. anywhere: a capital letter standing alone ("I pick B") and not followed by a word.

A letter joined to another by "or", "and", "/" or a comma ("A or B", "(B)/(C)") claims both. The
strongest level that claims anything decides: one letter is the answer; two different letters are an
ambiguous answer, a recorded failure (neither the option text nor the judge overrules it: the model
hedged). After a first-line letter, only a later "answer: X" naming another letter makes it ambiguous;
an explanation that mentions other options does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

LETTERS = "ABCDE"

# Chat special tokens a decoder may leave in ("<|im_start|>", "</s>", "[/INST]"), and markdown emphasis.
_SPECIAL = re.compile(r"<\|[^<>|]*\|>|</?s>|\[/?INST\]|[*`]")
# A role name the model wrote itself: "ASSISTANT: D", "assistant\nD.", "### Assistant: (E)", "GPT: B".
_ROLE = re.compile(r"(?:^|(?<=[\s#>\]]))(?:assistant|gpt)[ \t]*(?::|\n)", re.IGNORECASE)
# What may precede the letter on the first line: "Answer:", "The correct answer is", "Best option -".
_PREFIX = (r"(?:(?:the|my)\s+)?(?:(?:final|correct|best|right)\s+)?(?:answer|option|choice)"
           r"(?:\s+(?:is|would\s+be|should\s+be))?\s*[:=\-]?\s*")
_CONNECTIVE = r"(?:\s*(?:,|/|&|\bor\b|\band\b|\bnor\b|\bversus\b|\bvs\.?))+\s*(?:(?:option|choice)\s+)?"
# A letter in brackets, or bare and then closed by punctuation, a line break or the end of the text.
_CLOSED = r"(?:[\(\[]([A-Ea-e])[\)\]]|([A-Ea-e])(?=[ \t]*(?:$|\n)|[.:;,!?)\]](?![\w'])|[ \t]+[-\u2013\u2014:]))"
# ... or, in either case, offered as an alternative to another letter: "a or b", "(A)/(B)" (both claimed).
_JOINED = r"(?:[\(\[]?([A-Ea-e])[\)\]]?(?=\s*(?:/|\bor\b)\s*[\(\[]?[A-Ea-e][\)\]]?(?![\w'\-])))"
_LEADING = re.compile(rf"^\s*(?:{_PREFIX})?(?:{_CLOSED}|{_JOINED})", re.IGNORECASE)
# A capital letter standing alone, not followed by a word: "I pick B", "B or C", never "A red" or "C opens".
_UPPER_ALONE = r"(?-i:([A-E]))(?![\w'\-]|\.\w)(?![ \t]+(?!(?:or|and|nor)\b)(?-i:[a-z]))"
# "the answer is B", "answer: (c)": a lower-case letter only when bracketed or closed ("the answer is a
# circle" is not option A); a capital one also before a word ("The answer is B because ...").
_ANSWER_IS = re.compile(rf"\b(?:answer|choice)(?:\s+(?:is|would\s+be|should\s+be))?\s*[:=\-]?\s*"
                        rf"(?:{_CLOSED}|(?-i:([A-E]))(?![\w'\-]))", re.IGNORECASE)
_OPTION = re.compile(rf"\boption\s*(?:{_CLOSED}|(?-i:([A-E]))(?![\w'\-]))|[\(\[]([A-Ea-e])[\)\]]", re.IGNORECASE)
_BARE = re.compile(rf"(?<![\w'\-]){_UPPER_ALONE}")
# After a connective a capital letter counts even before a word: "B and C are both possible".
_FOLLOW = re.compile(rf"^{_CONNECTIVE}(?:{_CLOSED}|(?-i:([A-E]))(?![\w'\-]|\.\w))", re.IGNORECASE)


@dataclass(frozen=True)
class Extraction:
    choice: int | None
    method: str
    """`letter`, `text`, `judge` or `failed`."""
    ambiguous: tuple[int, ...] = ()
    """For a failure: the different options the answer claimed (e.g. (0, 1) for "A or B"), else empty."""


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _clean(answer: str) -> str:
    """The answer without special tokens and markdown, and after the last role name the model wrote."""
    text = _SPECIAL.sub("", answer)
    roles = list(_ROLE.finditer(text))
    return text[roles[-1].end():] if roles else text


def _letter(m: re.Match) -> str:
    return next(g for g in m.groups() if g).upper()


def _with_followers(text: str, m: re.Match) -> set[str]:
    """The letter of `m` and every letter joined to it by a connective ("A or B, or C")."""
    found, end = {_letter(m)}, m.end()
    while True:
        f = _FOLLOW.match(text[end:])
        if not f:
            return found
        found.add(_letter(f))
        end += f.end()


def _claims(text: str, pattern: re.Pattern) -> set[str]:
    out: set[str] = set()
    for m in pattern.finditer(text):
        out |= _with_followers(text, m)
    return out


def _letters(answer: str) -> set[str]:
    """The letters the strongest level of the answer claims (empty: it claims none)."""
    text = _clean(answer).strip()
    if not text:
        return set()
    first, _, rest = text.partition("\n")
    m = _LEADING.match(first)
    if m:
        return _with_followers(first, m) | _claims(rest, _ANSWER_IS)
    for level in (_ANSWER_IS, _OPTION, _BARE):
        found = _claims(text, level)
        if found:
            return found
    return set()


def _resolve(answer: str, n_options: int = len(LETTERS)) -> tuple[int | None, tuple[int, ...]]:
    """(option index, ()) for one claimed letter; (None, claimed) for several; (None, ()) for none."""
    claimed = sorted(LETTERS.index(x) for x in _letters(answer))
    if len(claimed) == 1 and claimed[0] < n_options:
        return claimed[0], ()
    return None, tuple(claimed) if len(claimed) > 1 else ()


def letter_choice(answer: str, n_options: int = len(LETTERS)) -> int | None:
    """The option index of the one letter the answer claims; None for no letter, an ambiguous one (two
    different letters) or a letter past the last of `n_options` options."""
    return _resolve(answer, n_options)[0]


def text_choice(answer: str, options: list[str]) -> int | None:
    """The option whose text the answer contains, if exactly one (longest match wins over its own prefixes)."""
    norm = _normalize(_clean(answer))
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
    """Letter, then text, then `judge(answer) -> judge's reply` read for a letter, else a failure.

    An answer claiming two different letters is a failure at once (`ambiguous` names them)."""
    letter, ambiguous = _resolve(answer, len(options))
    if letter is not None:
        return Extraction(letter, "letter")
    if ambiguous:
        return Extraction(None, "failed", ambiguous)
    text = text_choice(answer, options)
    if text is not None:
        return Extraction(text, "text")
    if judge is not None and answer.strip():
        verdict = letter_choice(judge(answer), len(options))
        if verdict is not None:
            return Extraction(verdict, "judge")
    return Extraction(None, "failed")
