"""Answer extraction on a hand-made set of the shapes real chat models produce (no model runs).

Each shape the issue lists has answers in both cases, with and without the decoration around them; the
ambiguous ones (two different letters claimed) must stay recorded failures, and sentences that merely
start with "A" (an article) or "C" (EgoSchema's name for the camera wearer) must not be read as letters.
"""

from __future__ import annotations

import pytest

from evalsuite.extraction import extract_choice, letter_choice

# Options in the EgoSchema style: option C's text starts with "a", option E's names the camera wearer "C".
OPTIONS = ["the person washes the dishes", "the person reads a book", "a red circle moves",
           "the person cooks dinner", "C opens the fridge"]

SHAPES = {
    "lone letter, upper case": [("A", 0), ("B", 1), ("C", 2), ("D", 3), ("E", 4), ("  D  ", 3)],
    "lone letter, lower case": [("a", 0), ("b", 1), ("c", 2), ("d", 3), ("e", 4), ("\nb\n", 1)],
    "letter, then a line break and an explanation": [
        ("C\nBecause the person is at the stove.", 2),
        ("b\nThe person holds a book in every frame.", 1),
        ("D.\n\nExplanation: option B never happens, the pan is on the stove.", 3),  # other options mentioned
        ("A\nB is wrong because nobody reads.", 0),
    ],
    "letter, then punctuation and the option's text": [
        ("B. the person reads a book", 1), ("E) C opens the fridge", 4), ("D: the person cooks dinner", 3),
        ("a, because the sink is full", 0), ("C - a red circle moves", 2),
    ],
    "role prefix before the answer": [
        ("ASSISTANT: D", 3), ("Assistant: b", 1), ("assistant\nD.", 3), ("assistant\n(e)", 4),
        ("USER: which one? ASSISTANT: (B)", 1), ("<|im_start|>assistant\nC<|im_end|>", 2), ("GPT: a", 0),
        ("### Assistant: E", 4), ("[/INST] D", 3),
    ],
    "answer prefix": [
        ("Answer: (E)", 4), ("answer: e", 4), ("Answer: B", 1), ("The answer is C.", 2), ("The answer is (d)", 3),
        ("Final answer: **A**", 0), ("The correct answer is B because the book is open.", 1),
        ("My choice is D.", 3), ("I watched closely, and the answer is E.", 4), ("answer - c", 2),
    ],
    "bracketed letter": [("[A]", 0), ("(a)", 0), ("(B)", 1), ("[c]", 2), ("(D) the person cooks dinner", 3),
                         ("[e]\nThe fridge door opens.", 4)],
    "Option X": [("Option C", 2), ("option c", 2), ("Option (D)", 3), ("option e.", 4), ("Best option: A", 0),
                 ("It has to be option B, the book.", 1)],
    "letter alone in a sentence": [("I pick B", 1), ("I would go with D.", 3), ("I choose\nE\nbecause", 4)],
}

AMBIGUOUS = [
    ("A or B", (0, 1)), ("a or b", (0, 1)), ("A/B", (0, 1)), ("(A) or (B)", (0, 1)), ("B, C", (1, 2)),
    ("either C or D", (2, 3)), ("Option B or option C", (1, 2)), ("Answer: A\nAnswer: B", (0, 1)),
    ("The answer is B or D.", (1, 3)), ("I think A, but maybe B", (0, 1)), ("ASSISTANT: C or E", (2, 4)),
    ("B and C are both possible", (1, 2)),
]

NOT_A_LETTER = [
    "A red square appears",       # an article, not option A (and no option's text is in it)
    "C opens the door",           # the camera wearer, not option C
    "the answer is a circle",
    "E.g. the person is in a kitchen",
    "Apple", "JCCCCC", "", "   ", "I am not sure.",
]


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_shape_is_read_as_its_letter(shape):
    for answer, expected in SHAPES[shape]:
        ext = extract_choice(answer, OPTIONS)
        assert (ext.choice, ext.method) == (expected, "letter"), (shape, answer, ext)
        assert letter_choice(answer) == expected


@pytest.mark.parametrize("answer, claimed", AMBIGUOUS)
def test_two_different_letters_stay_a_recorded_failure(answer, claimed):
    asked = []

    def judge(a):  # would settle it, but an answer that hedges between letters is not the judge's to pick
        asked.append(a)
        return "A"

    ext = extract_choice(answer, OPTIONS, judge)
    assert (ext.choice, ext.method, ext.ambiguous) == (None, "failed", claimed)
    assert letter_choice(answer) is None and not asked


@pytest.mark.parametrize("answer", NOT_A_LETTER)
def test_words_that_look_like_letters_are_not_read_as_letters(answer):
    assert letter_choice(answer) is None
    ext = extract_choice(answer, OPTIONS)
    assert ext.choice is None and ext.method == "failed" and ext.ambiguous == ()


def test_a_sentence_starting_with_an_article_can_still_match_an_option_text():
    # "A red circle moves" is option C's text (index 2), not the letter A (index 0)
    assert extract_choice("A red circle moves", OPTIONS) == extract_choice("a red circle moves.", OPTIONS)
    ext = extract_choice("A red circle moves", OPTIONS)
    assert (ext.choice, ext.method) == (2, "text")
    # and the camera wearer's option by its text, after a role prefix
    ext = extract_choice("ASSISTANT: C opens the fridge", OPTIONS)
    assert (ext.choice, ext.method) == (4, "text")


def test_an_explanation_does_not_overrule_the_first_line_but_a_second_answer_does():
    assert extract_choice("C\nOption B is about a book, and there is no book.", OPTIONS).choice == 2
    assert extract_choice("The answer is C, not B.", OPTIONS).choice == 2
    assert extract_choice("A and B are both wrong; the answer is D.", OPTIONS).choice == 3
    ext = extract_choice("C\nOn reflection, the answer is B.", OPTIONS)
    assert (ext.choice, ext.ambiguous) == (None, (1, 2))


def test_a_letter_past_the_last_option_is_a_failure():
    three = OPTIONS[:3]
    assert extract_choice("D", three) == extract_choice("zzz", three)
    assert extract_choice("D", three).choice is None
    assert letter_choice("D", n_options=3) is None and letter_choice("C", n_options=3) == 2


def test_the_judge_reply_is_read_with_the_same_rules():
    replies = iter(["ASSISTANT: (d)", "A or B"])
    ext = extract_choice("something happens in the kitchen", OPTIONS, lambda a: next(replies))
    assert (ext.choice, ext.method) == (3, "judge")
    ext = extract_choice("something else happens", OPTIONS, lambda a: next(replies))
    assert (ext.choice, ext.method) == (None, "failed")
