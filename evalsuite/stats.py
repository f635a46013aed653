"""Uncertainty for accuracy numbers: bootstrap confidence intervals and exact McNemar tests.

Every comparison in this project is made on a fixed benchmark (the same items are
answered by every model and in every condition), so the right unit of resampling is
the *item*.  Three estimators cover the comparisons the reports make:

* :func:`accuracy_ci` - one accuracy with a percentile-bootstrap CI.
* :func:`paired_difference` - the gain ``mean(a) - mean(b)`` of two conditions or
  models on the same items.  The bootstrap resamples item indices once and applies
  them to both vectors, so the item-difficulty variance that ``a`` and ``b`` share
  cancels; an exact McNemar test on the discordant pairs gives the p-value.
* :func:`contrast_of_differences` - a difference of two paired gains
  (e.g. ``gain_image - gain_video``), again resampling the same items for all four
  vectors.
* :func:`random_fill_accuracy_ci` - the accuracy of a generate-scored run whose
  unreadable answers (extraction failures) each score ``1 / n_options``, the expected
  accuracy of a uniform guess, with the same percentile bootstrap.

Inputs are per-item correctness vectors (bools or 0/1 ints).  Only numpy and the
standard library are used, and results are deterministic for a given ``seed``.

Implementation note: for resampling with shared indices the statistic is a mean of a
per-item score (``a``; ``a - b``; ``(a1 - b1) - (a2 - b2)``), so we reduce to that
score first and bootstrap a single integer vector.  This is exactly the paired
bootstrap (same indices for every vector), only cheaper, and it keeps the arithmetic
in integers until the final division so that identical inputs give exactly zero-width
intervals.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "Estimate",
    "accuracy_ci",
    "paired_difference",
    "contrast_of_differences",
    "mcnemar_exact",
    "random_fill_accuracy_ci",
]

# Upper bound on the number of resampled indices held in memory at once
# (n_boot * n int64s would be 160 MB for n=10k items and 2000 replicates).
_MAX_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a confidence interval.

    Attributes:
        value: The point estimate computed on the observed items.
        ci_low, ci_high: Percentile-bootstrap interval bounds.
        n: Number of items the estimate is based on.
        p_value: Exact two-sided McNemar p-value (paired comparisons only).
        discordant: ``(b01, b10)`` for paired comparisons: ``b01`` counts items that
            ``a`` got wrong and ``b`` got right, ``b10`` items ``a`` got right and
            ``b`` got wrong.
    """

    value: float
    ci_low: float
    ci_high: float
    n: int
    p_value: Optional[float] = None
    discordant: Optional[Tuple[int, int]] = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON/MLflow friendly); optional fields are omitted when unset."""
        out = asdict(self)
        if self.p_value is None:
            del out["p_value"]
        if self.discordant is None:
            del out["discordant"]
        else:
            out["discordant"] = [int(x) for x in self.discordant]
        return out


# --------------------------------------------------------------------------- inputs


def _as_binary(name: str, values: Sequence[bool | int]) -> np.ndarray:
    """Validate one correctness vector and return it as an int64 array of 0/1."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of per-item correctness, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one item to estimate an accuracy")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must contain bools or 0/1 integers, got dtype {arr.dtype}")
    # Catch the common mistake of passing predicted labels instead of correctness.
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        first = arr[bad][0]
        raise ValueError(f"{name} must contain only 0/1 (or bools); found {first!r} at index {int(np.argmax(bad))}")
    return arr.astype(np.int64)


def _as_binary_group(**vectors: Sequence[bool | int]) -> list[np.ndarray]:
    """Validate several vectors that must describe the same items (equal lengths)."""
    arrays = [_as_binary(name, v) for name, v in vectors.items()]
    lengths = {name: len(a) for name, a in zip(vectors, arrays)}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name} has {n} items" for name, n in lengths.items())
        raise ValueError(f"length mismatch: {described}; paired statistics need the same items in every vector")
    return arrays


def _check_params(n_boot: int, alpha: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


# ------------------------------------------------------------------------ bootstrap


def _bootstrap_sums(scores: np.ndarray, n_boot: int, seed: int | None) -> np.ndarray:
    """Sums of ``scores`` over ``n_boot`` resamples of the items (with replacement).

    Integer scores give integer sums, so the bootstrap means ``sums / n`` are
    computed with a single rounding, exactly like the point estimate.
    """
    n = scores.size
    rng = np.random.default_rng(seed)
    sums = np.empty(n_boot, dtype=np.int64)
    # Chunk size depends only on n, so results are reproducible for a given seed.
    rows = max(1, _MAX_CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, rows):
        stop = min(start + rows, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        sums[start:stop] = scores[idx].sum(axis=1)
    return sums


def _percentile_estimate(scores: np.ndarray, n_boot: int, seed: int | None, alpha: float,
                         scale: int = 1) -> Estimate:
    """Mean of integer per-item ``scores`` / ``scale`` with a percentile-bootstrap interval."""
    n = scores.size
    value = int(scores.sum()) / (n * scale)
    boot = _bootstrap_sums(scores, n_boot, seed) / (n * scale)
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Estimate(value=float(value), ci_low=float(low), ci_high=float(high), n=int(n))


# ------------------------------------------------------------------------ public API


def accuracy_ci(
    correct: Sequence[bool | int],
    n_boot: int = 2000,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> Estimate:
    """Accuracy of one model with a percentile-bootstrap ``1 - alpha`` interval.

    Args:
        correct: Per-item correctness (bools or 0/1).
        n_boot: Number of bootstrap replicates.
        seed: Seed for ``numpy.random.default_rng``; the same seed gives the same CI.
        alpha: Two-sided level; 0.05 gives a 95% interval.

    Raises:
        ValueError: empty input, values other than 0/1, or invalid ``n_boot``/``alpha``.
    """
    _check_params(n_boot, alpha)
    x = _as_binary("correct", correct)
    return _percentile_estimate(x, n_boot, seed, alpha)


def mcnemar_exact(b01: int, b10: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts.

    Under H0 (both systems equally accurate) each discordant item is equally likely to
    favour either side, so ``min(b01, b10)`` is Binomial(b01 + b10, 1/2) in the lower
    tail.  ``p = min(1, 2 * P[X <= min(b01, b10)])`` and ``p = 1`` without discordant
    pairs.  Computed with integer binomial coefficients; Python's int/int division is
    correctly rounded, so this is exact up to the final float conversion even for
    thousands of discordant items.
    """
    if b01 < 0 or b10 < 0:
        raise ValueError(f"discordant counts must be non-negative, got b01={b01}, b10={b10}")
    total = b01 + b10
    if total == 0:
        return 1.0
    tail = sum(math.comb(total, k) for k in range(min(b01, b10) + 1))
    return min(1.0, (2 * tail) / (1 << total))


def paired_difference(
    a_correct: Sequence[bool | int],
    b_correct: Sequence[bool | int],
    n_boot: int = 2000,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> Estimate:
    """The gain ``mean(a) - mean(b)`` measured on the same items, with paired uncertainty.

    The bootstrap resamples item indices once per replicate and applies them to both
    vectors: items that are hard (or easy) for both cancel, which is why the paired
    interval is much narrower than one from two independent resamples.  The p-value is
    the exact McNemar test (see :func:`mcnemar_exact`).

    Args:
        a_correct, b_correct: Per-item correctness of the two systems/conditions,
            aligned item by item.
        n_boot, seed, alpha: As in :func:`accuracy_ci`.

    Returns:
        An :class:`Estimate` with ``p_value`` and ``discordant=(b01, b10)`` set.

    Raises:
        ValueError: empty input or lengths that differ (the message gives both).
    """
    _check_params(n_boot, alpha)
    a, b = _as_binary_group(a_correct=a_correct, b_correct=b_correct)
    est = _percentile_estimate(a - b, n_boot, seed, alpha)
    b01 = int(np.sum((a == 0) & (b == 1)))
    b10 = int(np.sum((a == 1) & (b == 0)))
    return Estimate(
        value=est.value,
        ci_low=est.ci_low,
        ci_high=est.ci_high,
        n=est.n,
        p_value=mcnemar_exact(b01, b10),
        discordant=(b01, b10),
    )


def contrast_of_differences(
    a1: Sequence[bool | int],
    b1: Sequence[bool | int],
    a2: Sequence[bool | int],
    b2: Sequence[bool | int],
    n_boot: int = 2000,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> Estimate:
    """Difference of two paired gains, ``(mean(a1) - mean(b1)) - (mean(a2) - mean(b2))``.

    Typical use: ``gain_image - gain_video``, where model 1 (image-tuned) and model 2
    (video-tuned) are each scored in conditions ``a`` and ``b`` on the same items.
    All four vectors must be aligned item by item; every bootstrap replicate draws one
    set of item indices and applies it to all four, so correlations both between
    conditions and between models are respected.  No p-value is attached: there is no
    exact counterpart of McNemar's test for this contrast, and reporting a bootstrap
    "p-value" would suggest more precision than the CI already conveys.

    Raises:
        ValueError: empty input or any length mismatch (the message gives all lengths).
    """
    _check_params(n_boot, alpha)
    va1, vb1, va2, vb2 = _as_binary_group(a1=a1, b1=b1, a2=a2, b2=b2)
    return _percentile_estimate((va1 - vb1) - (va2 - vb2), n_boot, seed, alpha)


def random_fill_accuracy_ci(
    correct: Sequence[bool | int],
    failed: Sequence[bool | int],
    n_options: int,
    n_boot: int = 2000,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> Estimate:
    """Accuracy with every failed item scored ``1 / n_options``: the expectation of a uniform guess.

    "Strict" accuracy (:func:`accuracy_ci` on ``correct``) counts an answer no rule or
    judge could map to an option as wrong; evaluations that fill such answers with a
    random option (VLMEvalKit does) report, on average, this number instead.  Each item
    scores ``n_options`` (right), ``1`` (failed) or ``0`` (wrong) in integers and the mean
    is divided by ``n_options`` once, so the bootstrap is the one of :func:`accuracy_ci`:
    with the same ``seed`` both resample the same items, and ``value`` equals the strict
    accuracy plus ``failed_share / n_options``.

    Args:
        correct: Per-item correctness (a failed item is not correct).
        failed: Per-item extraction failure, aligned with ``correct``.
        n_options: Options per item (5 for EgoSchema).
        n_boot, seed, alpha: As in :func:`accuracy_ci`.

    Raises:
        ValueError: as :func:`accuracy_ci`, a length mismatch, an item both correct and
            failed, or ``n_options < 2``.
    """
    _check_params(n_boot, alpha)
    if isinstance(n_options, bool) or not isinstance(n_options, (int, np.integer)) or n_options < 2:
        raise ValueError(f"n_options must be an integer >= 2, got {n_options!r}")
    c, f = _as_binary_group(correct=correct, failed=failed)
    both = (c == 1) & (f == 1)
    if both.any():
        raise ValueError(f"item {int(np.argmax(both))} is both correct and failed: a failed extraction has no answer")
    return _percentile_estimate(int(n_options) * c + f, n_boot, seed, alpha, scale=int(n_options))
