"""Side-by-side timing on a shared, noisy machine.

Absolute times drift with whatever else runs, so alternatives are never timed one after the other:
each round runs every alternative once (the order rotates between rounds, so none always goes first
or last), and a comparison is the median of the per-round ratios.

    t = interleave({"shared": lambda: score(items), "naive": lambda: naive(items)}, rounds=5)
    t.ratio("naive", "shared")      # how many times slower the naive way is
    t.median("shared")              # seconds
    t.results["naive"][-1]          # what the last call returned (to assert both agree)
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable


@dataclass
class Timings:
    seconds: dict[Hashable, list[float]] = field(default_factory=dict)
    """Per alternative, one duration per round."""
    results: dict[Hashable, list[Any]] = field(default_factory=dict)
    """Per alternative, what each round's call returned."""

    def median(self, name: Hashable) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, slow: Hashable, fast: Hashable) -> float:
        """Median over rounds of seconds(slow) / seconds(fast)."""
        return statistics.median(s / f for s, f in zip(self.seconds[slow], self.seconds[fast]))

    @property
    def rounds(self) -> int:
        return len(next(iter(self.seconds.values())))


def _rotations(names: list, rounds: int):
    for r in range(rounds):
        k = r % len(names)
        yield names[k:] + names[:k]


def interleave(alternatives: dict[Hashable, Callable[[], Any]], rounds: int, warmup: int = 1) -> Timings:
    """Wall-clock seconds of each alternative, round by round (after `warmup` untimed rounds)."""
    names = list(alternatives)
    for _ in range(warmup):
        for name in names:
            alternatives[name]()
    out = Timings({n: [] for n in names}, {n: [] for n in names})
    for order in _rotations(names, rounds):
        for name in order:
            t0 = time.perf_counter()
            result = alternatives[name]()
            out.seconds[name].append(time.perf_counter() - t0)
            out.results[name].append(result)
    return out


def interleave_measured(alternatives: dict[Hashable, Callable[[], tuple[float, Any]]], rounds: int) -> Timings:
    """Like `interleave`, for alternatives that time themselves: each returns (seconds, result).

    Used where the wall clock of the whole call would include set-up that is not being compared
    (e.g. a trainer's start-up when comparing its step time).
    """
    names = list(alternatives)
    out = Timings({n: [] for n in names}, {n: [] for n in names})
    for order in _rotations(names, rounds):
        for name in order:
            seconds, result = alternatives[name]()
            out.seconds[name].append(seconds)
            out.results[name].append(result)
    return out
