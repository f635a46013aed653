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
  vectors; its p-value is a paired sign-flip test (:func:`sign_flip_p`).
* :func:`random_fill_accuracy_ci` - the accuracy of a generate-scored run whose
  unreadable answers (extraction failures) each score ``1 / n_options``, the expected
  accuracy of a uniform guess, with the same percentile bootstrap.
* :func:`hierarchical_bootstrap` - a statistic averaged over training seeds (an arm of a
  study) or a contrast of such averages, with a CI that resamples seeds and items.

Two building blocks serve statistics that are not a mean of one per-item score (the gain
relative to headroom of :func:`evalsuite.report.evaluation.relative_gain` is a ratio):
:func:`paired_bootstrap_sums` resamples the items once per replicate and sums several
vectors over the same draw, with the draws of the estimators above for the same ``seed``;
:func:`percentile_interval` is the interval every estimator here reads off its replicates.

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
    "SeedEstimate",
    "hierarchical_bootstrap",
    "paired_bootstrap_sums",
    "percentile_interval",
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
        p_value: Two-sided p-value of a paired comparison: exact McNemar for a difference of two
            accuracies, the paired sign-flip test for a contrast of differences; unset otherwise.
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


def _check_n_boot(n_boot: int) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")


def _check_alpha(alpha: float) -> None:
    if not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _check_params(n_boot: int, alpha: float) -> None:
    _check_n_boot(n_boot)
    _check_alpha(alpha)


# ------------------------------------------------------------------------ bootstrap


def _bootstrap_sums(vectors: Sequence[np.ndarray], n_boot: int, seed: int | None) -> list[np.ndarray]:
    """Per vector, its sums over ``n_boot`` resamples of the items (with replacement), every vector
    summed over the same draw. The one item-resampling loop of this module (:func:`hierarchical_bootstrap`
    draws seeds too and has its own).

    Integer scores give integer sums, so the bootstrap means ``sums / n`` are
    computed with a single rounding, exactly like the point estimate.
    """
    n = vectors[0].size
    rng = np.random.default_rng(seed)
    sums = [np.empty(n_boot, dtype=np.int64) for _ in vectors]
    # Chunk size depends only on n (not on how many vectors), so the draws are reproducible for a
    # given seed and the same whatever is summed over them.
    rows = max(1, _MAX_CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, rows):
        stop = min(start + rows, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        for out, scores in zip(sums, vectors):
            out[start:stop] = scores[idx].sum(axis=1)
    return sums


def _percentile_estimate(scores: np.ndarray, n_boot: int, seed: int | None, alpha: float,
                         scale: int = 1) -> Estimate:
    """Mean of integer per-item ``scores`` / ``scale`` with a percentile-bootstrap interval."""
    n = scores.size
    value = int(scores.sum()) / (n * scale)
    boot = _bootstrap_sums([scores], n_boot, seed)[0] / (n * scale)
    low, high = percentile_interval(boot, alpha)
    return Estimate(value=float(value), ci_low=float(low), ci_high=float(high), n=int(n))


def percentile_interval(replicates: Sequence[float], alpha: float = 0.05) -> Tuple[float, float]:
    """``(low, high)``: the ``alpha / 2`` and ``1 - alpha / 2`` quantiles of bootstrap replicates
    (numpy's default linear interpolation), the percentile interval of every estimator here.

    Raises:
        ValueError: no replicate, or ``alpha`` outside (0, 1).
    """
    _check_alpha(alpha)
    boot = np.asarray(replicates)
    if boot.size == 0:
        raise ValueError("replicates is empty: a percentile interval needs at least one bootstrap replicate")
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def paired_bootstrap_sums(
    vectors: Sequence[Sequence[bool | int]],
    n_boot: int = 2000,
    seed: int | None = 0,
) -> list[np.ndarray]:
    """Each vector's sum over the items of every bootstrap replicate, all vectors resampled alike.

    Replicate ``r`` draws ``n`` item indices with replacement and sums every vector over them:
    ``out[k][r]`` is vector ``k``'s sum on draw ``r`` (an int64 array of ``n_boot`` per vector). Any
    statistic of the vectors' means on shared items is a function of these sums (``sums[k] / n``); a
    replicate's statistic that is undefined (a ratio over zero) is the caller's to leave out. This is how
    :func:`evalsuite.report.evaluation.relative_gain` gets its replicates. The draws depend only on ``n``,
    ``n_boot`` and ``seed``: with the same ones, :func:`accuracy_ci`, :func:`paired_difference` and the
    others resample the same items, e.g. ``out[0] - out[1]`` of ``[a, b]`` are the replicate sums of
    :func:`paired_difference` ``(a, b)``.

    Args:
        vectors: Per-item integer scores (bools or ints, e.g. correctness), aligned item by item.
        n_boot, seed: As in :func:`accuracy_ci`.

    Raises:
        ValueError: no vector, an empty or non-integer vector, vectors of different lengths (the message
            gives every length) or an invalid ``n_boot``.
    """
    _check_n_boot(n_boot)
    if not vectors:
        raise ValueError("vectors is empty: need at least one per-item score vector to resample")
    arrays = []
    for k, values in enumerate(vectors):
        arr = np.asarray(values)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"vectors[{k}] must be a non-empty 1-D sequence of per-item scores, got shape {arr.shape}")
        if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"vectors[{k}] must hold bools or integers (per-item scores), got dtype {arr.dtype}")
        arrays.append(arr.astype(np.int64))
    if len({a.size for a in arrays}) > 1:
        described = ", ".join(f"vectors[{k}] has {a.size} items" for k, a in enumerate(arrays))
        raise ValueError(f"length mismatch: {described}; a paired bootstrap needs the same items in every vector")
    return _bootstrap_sums(arrays, n_boot, seed)


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
    conditions and between models are respected.  The p-value is the paired sign-flip
    test of the per-item contrasts (:func:`sign_flip_p`, seeded by ``seed``), the
    counterpart of McNemar's test here: a contrast that rests on a handful of items can
    have a percentile interval clear of 0 and a p-value far above 0.05.

    Raises:
        ValueError: empty input or any length mismatch (the message gives all lengths).
    """
    _check_params(n_boot, alpha)
    va1, vb1, va2, vb2 = _as_binary_group(a1=a1, b1=b1, a2=a2, b2=b2)
    scores = (va1 - vb1) - (va2 - vb2)
    est = _percentile_estimate(scores, n_boot, seed, alpha)
    return Estimate(value=est.value, ci_low=est.ci_low, ci_high=est.ci_high, n=est.n,
                    p_value=sign_flip_p(scores, seed=seed))


SIGN_FLIP_EXACT = 16
"""Up to this many non-zero per-item differences :func:`sign_flip_p` enumerates every sign pattern (65,536)."""


def sign_flip_p(diffs: Sequence[float], n_perm: int = 20000, seed: int | None = 0) -> float:
    """Two-sided p-value of the paired sign-flip (randomization) test that per-item differences are
    centred on 0: under that null each item's difference is as likely to have had the other sign, so the
    p-value is the share of sign patterns whose |sum| reaches the observed one.

    Exact (every pattern of the non-zero differences) up to :data:`SIGN_FLIP_EXACT` of them; else
    ``n_perm`` seeded random patterns, ``(1 + hits) / (1 + n_perm)``. For differences of two 0/1
    vectors the exact test is McNemar's (:func:`mcnemar_exact`). Items whose difference is 0 change no
    pattern's sum and are left out; without any, ``p = 1``.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1 or not np.isfinite(d).all():
        raise ValueError(f"diffs must be a 1-D sequence of finite per-item differences, got shape {d.shape}")
    d = d[d != 0]
    k = d.size
    if k == 0:
        return 1.0
    observed = abs(d.sum()) - 1e-9 * np.abs(d).sum()  # float sums of the same terms in another order
    if k <= SIGN_FLIP_EXACT:
        signs = ((np.arange(1 << k)[:, None] >> np.arange(k)) & 1) * 2 - 1
        return float(np.mean(np.abs(signs @ d) >= observed))
    _check_n_boot(n_perm)
    rng, hits = np.random.default_rng(seed), 0
    rows = max(1, _MAX_CHUNK_ELEMENTS // k)
    for start in range(0, n_perm, rows):
        signs = rng.integers(0, 2, size=(min(rows, n_perm - start), k)) * 2 - 1
        hits += int(np.sum(np.abs(signs @ d) >= observed))
    return (1 + hits) / (1 + n_perm)


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


# ------------------------------------------------------------------ across training seeds


@dataclass(frozen=True)
class SeedEstimate(Estimate):
    """An :class:`Estimate` over training seeds (:func:`hierarchical_bootstrap`).

    Attributes:
        n: Items per seed (the columns of each side's matrix).
        n_seeds: Seeds per side, e.g. ``(3,)`` for one arm, ``(3, 2)`` for a contrast of two arms.
        per_seed: Per side, each seed's own statistic (its mean item score), in the order given.
        paired: Whether the sides shared each replicate's item draw.
    """

    n_seeds: Tuple[int, ...] = ()
    per_seed: Tuple[Tuple[float, ...], ...] = ()
    paired: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["n_seeds"] = list(self.n_seeds)
        out["per_seed"] = [list(side) for side in self.per_seed]
        return out


def _seed_matrix(name: str, values) -> np.ndarray:
    """One side of :func:`hierarchical_bootstrap`: a non-empty seeds x items matrix of finite scores."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except ValueError:
        raise ValueError(f"{name} must be a seeds x items matrix (every seed scored on the same items); "
                         "got rows of different lengths") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty seeds x items matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds a non-finite score: every item score must be a number")
    return arr


def hierarchical_bootstrap(
    sides: Sequence[Sequence[Sequence[float]]],
    weights: Sequence[float] = (1.0,),
    paired: bool = True,
    n_boot: int = 2000,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> SeedEstimate:
    """``sum_k weights[k] * mean over seeds of side k (mean item score of that seed)``, CI over seeds and items.

    ``sides[k]`` is a seeds x items matrix: row s holds the per-item scores of training seed s of side k
    (correctness 0/1 for an accuracy; ``vcot - base`` in -1/0/1 for a paired gain), every row over the
    same items in the same order. One side with weight 1 is an estimate across seeds; two sides with
    weights ``(1, -1)`` a contrast of two arms.

    Each bootstrap replicate is two-level: for every side the seeds are resampled with replacement
    (sides are separate training runs: their seeds are drawn independently), and within each resampled
    seed the items are resampled. Every seed of a study answers the same benchmark items, so an item's
    difficulty is common to all seeds: the replicate draws one set of item indices and applies it within
    every resampled seed (drawing items again for each seed would average that common part away and give
    intervals too narrow). With ``paired`` the same draw also serves every side (all sides must then have
    the same items in the same order), so item variance shared by the two sides of a contrast cancels, as
    in :func:`contrast_of_differences`; otherwise each side gets its own item draw.

    With one seed this is the item bootstrap of :func:`accuracy_ci` / :func:`paired_difference`; with
    seeds that disagree the interval widens by the seed-to-seed spread. The interval is the percentile
    interval of the replicates; with few seeds it is optimistic (3 seeds give few distinct seed draws).

    Raises:
        ValueError: an empty or ragged side, a non-finite score, ``weights`` of another length than
            ``sides``, paired sides with different item counts, or invalid ``n_boot``/``alpha``.
    """
    _check_params(n_boot, alpha)
    xs = [_seed_matrix(f"sides[{k}]", side) for k, side in enumerate(sides)]
    if not xs or len(weights) != len(xs):
        raise ValueError(f"need one weight per side: got {len(xs)} side(s) and {len(weights)} weight(s)")
    if paired and len({x.shape[1] for x in xs}) > 1:
        counts = ", ".join(f"sides[{k}] has {x.shape[1]}" for k, x in enumerate(xs))
        raise ValueError(f"paired sides must be scored on the same items: {counts}; pass paired=False")
    w = [float(v) for v in weights]
    per_seed = [x.mean(axis=1) for x in xs]
    value = sum(wk * float(ps.mean()) for wk, ps in zip(w, per_seed))
    boot = np.empty(n_boot, dtype=np.float64)
    rng = np.random.default_rng(seed)
    # Chunk size depends only on the shapes, so results are reproducible for a given seed.
    rows = max(1, _MAX_CHUNK_ELEMENTS // max(x.size for x in xs))
    for start in range(0, n_boot, rows):
        size = min(rows, n_boot - start)
        shared = rng.integers(0, xs[0].shape[1], size=(size, xs[0].shape[1])) if paired else None
        total = np.zeros(size)
        for wk, x in zip(w, xs):
            idx = shared if paired else rng.integers(0, x.shape[1], size=(size, x.shape[1]))
            means = x[:, idx].mean(axis=2).T  # replicate x seed: each seed's mean on the drawn items
            picks = rng.integers(0, x.shape[0], size=(size, x.shape[0]))
            total += wk * np.take_along_axis(means, picks, axis=1).mean(axis=1)
        boot[start:start + size] = total
    low, high = percentile_interval(boot, alpha)
    return SeedEstimate(value=float(value), ci_low=float(low), ci_high=float(high), n=int(xs[0].shape[1]),
                        n_seeds=tuple(int(x.shape[0]) for x in xs),
                        per_seed=tuple(tuple(float(v) for v in ps) for ps in per_seed), paired=bool(paired))
