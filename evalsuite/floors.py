"""Options-only guessers and the floor they set: what an item's options give away without its video.

Chance on a 5-way question is 20% only if the options carry no hint. A model finetuned on a generator's
data can learn any regularity of its option sets (the answer is often the longest option, an option that
is never the answer, ...), and then its accuracy above 20% says nothing about the frames. So every
accuracy is read against the best of a set of simple guessers that see only the options:

* `position_k` (k = 0..4): always the k-th option;
* `odd_one_out`: the option whose time-reversed wording (`language.reversal_partner`) is not among the
  options (or that has none, like "it does not change"); it abstains (position 0) unless every option
  parses as the synthetic generator's phrasing, so on other benchmarks it is position 0;
* `longest`, `shortest`: the option with the most / fewest characters (ties: the lower position);
* `prior`: a frequency prior fitted on other items (`fit_items`): for each option text, how often it is
  the answer when offered, Laplace-smoothed toward chance, `(answered + 1) / (offered + K)` with K the
  number of options (an unseen text scores exactly 1/K); the highest-scoring option wins, ties to the
  lower position. Runs only when `fit_items` are given (the synthetic train split, never the items
  being scored).

The floor is one guesser's accuracy on the scored items, with a bootstrap CI (`stats.accuracy_ci`). The
guesser is chosen on held-out fit items (`select_guesser`), not on the scored items: the best of nine
on the same 300 items would sit a couple of points above 20% by selection alone (measured: 0.20-0.23
over ten blocks of 300 items, 0.204 on 3000), which is noise, not a property of the option sets. Every
guesser's accuracy on the scored items is reported beside it (`per_guesser`, `best_on_items`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from data_recipes.synthetic.language import reversal_partner
from data_recipes.synthetic.samples import eval_record
from evalsuite.stats import accuracy_ci

POSITIONS = 5
PRIOR = "prior"
FIT_POOL = "guesser-fit"  # the synthetic fit items' pool: disjoint by key from every other sample


@dataclass(frozen=True)
class GuessItem:
    """The part of an item a guesser may look at (plus `answer` and `meta` to score and group it)."""

    question: str
    options: list[str]
    answer: int
    meta: dict = field(default_factory=dict)
    id: str = ""


def _from_dict(record: dict) -> GuessItem:
    """An item given as a dict (e.g. `eval_record`'s output) as a GuessItem."""
    missing = [k for k in ("question", "options", "answer") if k not in record]
    if missing:
        raise ValueError(f"item dict has no field {missing[0]!r} (items need question, options, answer, meta)")
    return GuessItem(record["question"], record["options"], record["answer"], record.get("meta") or {},
                     str(record.get("id", "")))


def _checked(items: Iterable, what: str) -> list:
    """Items with the fields the guessers need, or a ValueError naming the item and the field."""
    out = [_from_dict(item) if isinstance(item, dict) else item for item in items]
    if not out:
        raise ValueError(f"{what} is empty: need at least one item")
    for n, item in enumerate(out):
        for name in ("question", "options", "answer", "meta"):
            if not hasattr(item, name):
                raise ValueError(f"{what}[{n}] has no field {name!r} (items need question, options, answer, meta)")
        options = item.options
        if not isinstance(options, (list, tuple)) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise ValueError(f"{what}[{n}].options must be a list of at least 2 strings, got {options!r}")
        answer = item.answer
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
            raise ValueError(f"{what}[{n}].answer must be an option index 0..{len(options) - 1}, got {answer!r}")
        if item.meta is not None and not isinstance(item.meta, dict):
            raise ValueError(f"{what}[{n}].meta must be a dict, got {type(item.meta).__name__}")
    return out


# ------------------------------------------------------------------------------------------ guessers

def position(k: int) -> Callable:
    """Always the k-th option."""
    def guess(item) -> int:
        return k
    return guess


def _partner(option: str) -> tuple[bool, str | None]:
    """(parses as synthetic phrasing, time-reversed wording or None for a self-reversing option);
    `reversal_partner` raises ValueError for any other text (static answers, other benchmarks)."""
    try:
        partner = reversal_partner(option)
    except ValueError:
        return False, None
    return True, partner


def odd_one_out(item) -> int:
    """The first option whose reversal is not among the options (or is itself); position 0 when some
    option is not synthetic phrasing or no option is odd."""
    parsed = [_partner(o) for o in item.options]
    if not all(ok for ok, _ in parsed):
        return 0
    offered = {o.strip() for o in item.options}
    for i, (_, partner) in enumerate(parsed):
        if partner is None or partner not in offered:
            return i
    return 0


def longest(item) -> int:
    lengths = [len(o) for o in item.options]
    return lengths.index(max(lengths))


def shortest(item) -> int:
    lengths = [len(o) for o in item.options]
    return lengths.index(min(lengths))


class FrequencyPrior:
    """How often each option text is the answer when offered, on the fit items (see the module doc)."""

    def __init__(self, fit_items: Iterable) -> None:
        self.offered: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        for item in _checked(fit_items, "fit_items"):
            options = [o.strip() for o in item.options]
            self.offered.update(options)
            self.answered[options[item.answer]] += 1

    def score(self, option: str, n_options: int) -> float:
        text = option.strip()
        return (self.answered[text] + 1) / (self.offered[text] + n_options)

    def __call__(self, item) -> int:
        scores = [self.score(o, len(item.options)) for o in item.options]
        return scores.index(max(scores))


def guessers(fit_items: Iterable | None = None) -> dict[str, Callable]:
    """Every guesser by name, in the order that breaks ties between equally good ones."""
    out: dict[str, Callable] = {f"position_{k}": position(k) for k in range(POSITIONS)}
    out.update(odd_one_out=odd_one_out, longest=longest, shortest=shortest)
    if fit_items is not None:
        out[PRIOR] = FrequencyPrior(fit_items)
    return out


# --------------------------------------------------------------------------------------------- floor

def _best(correct: dict[str, list[int]], n_boot: int, seed: int) -> dict:
    accuracy = {name: sum(v) / len(v) for name, v in correct.items()}
    best = max(accuracy, key=lambda name: accuracy[name])  # first of equals: dicts keep guesser order
    est = accuracy_ci(correct[best], n_boot=n_boot, seed=seed)
    return {"best": best, "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": est.n}


def select_guesser(fit_items: Sequence) -> tuple[str, dict[str, float]]:
    """The guesser to report, chosen on held-out items, never on the items it is scored on.

    The fit items are split in two halves (even / odd positions): the prior is fitted on one and every
    guesser is scored on the other, then the roles swap; the guesser with the best mean held-out accuracy
    wins (ties: guesser order). Returns (name, {name: held-out accuracy})."""
    fit = _checked(fit_items, "fit_items")
    if len(fit) < 2:
        raise ValueError(f"fit_items: need at least 2 items to choose a guesser on held-out data, got {len(fit)}")
    halves = (fit[0::2], fit[1::2])
    held: dict[str, list[int]] = {}
    for train, test in (halves, halves[::-1]):
        for name, guess in guessers(train).items():
            held.setdefault(name, []).extend(int(guess(item) == item.answer) for item in test)
    accuracy = {name: sum(v) / len(v) for name, v in held.items()}
    return max(accuracy, key=lambda name: accuracy[name]), accuracy


def options_only_floor(items: Sequence, fit_items: Iterable | None = None, *, n_boot: int = 1000,
                       seed: int = 0) -> dict:
    """The options-only floor of `items`: one guesser's accuracy with a bootstrap CI.

    With `fit_items` (other items from the same generator) the guesser is chosen on them
    (`select_guesser`, held out) and then scored once on `items`: an unbiased estimate of what the option
    sets give away. Without them (e.g. EgoSchema) it is the best untrained guesser on `items` itself, which
    overstates the floor a little (the best of eight on the same items): a conservative floor.

    Returns {"best", "chosen_on": "fit_items" | "items", "value", "ci_low", "ci_high", "n",
    "per_guesser": {name: accuracy on items}, "best_on_items": {"name", "value"}, "by_kind": {kind: {...}}};
    `by_kind` reports the same guesser within each kind of item whose meta names one.
    """
    items = _checked(items, "items")
    fit = None if fit_items is None else _checked(fit_items, "fit_items")
    predict = guessers(fit)
    correct = {name: [int(guess(item) == item.answer) for item in items] for name, guess in predict.items()}
    per = {name: sum(v) / len(v) for name, v in correct.items()}
    if fit is not None:
        chosen, _ = select_guesser(fit)
    else:
        chosen = max(per, key=lambda name: per[name])

    def estimate(vector: list[int]) -> dict:
        est = accuracy_ci(vector, n_boot=n_boot, seed=seed)
        return {"best": chosen, "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": est.n}

    out = estimate(correct[chosen])
    top = max(per, key=lambda name: per[name])
    out |= {"chosen_on": "fit_items" if fit is not None else "items", "per_guesser": per,
            "best_on_items": {"name": top, "value": per[top]}}
    kinds = [(item.meta or {}).get("kind") for item in items]
    out["by_kind"] = {}
    for kind in sorted({k for k in kinds if k is not None}, key=str):
        out["by_kind"][str(kind)] = estimate([correct[chosen][i] for i, k in enumerate(kinds) if k == kind])
    return out


def synthetic_fit_items(seed: int, n: int = 2000) -> list[GuessItem]:
    """`n` eval-like items of the synthetic train split (pool "guesser-fit") to fit the prior on:
    the same generator as the test items, never the same scenes (splits are disjoint by signature)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of fit items, got {n!r}")
    out = []
    for i in range(n):
        r = eval_record(seed, i, "train", 32, pool=FIT_POOL)
        out.append(GuessItem(r["question"], list(r["options"]), int(r["answer"]), r["meta"], r["id"]))
    return out
