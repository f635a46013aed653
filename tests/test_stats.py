"""Tests for evalsuite.stats and the offline evaluate metrics built on it."""

import os

# The metrics must work without the Hub; set before anything imports `evaluate`/`datasets`.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evalsuite.stats import (
    Estimate,
    accuracy_ci,
    contrast_of_differences,
    mcnemar_exact,
    paired_bootstrap_sums,
    paired_difference,
    percentile_interval,
)


def width(est: Estimate) -> float:
    return est.ci_high - est.ci_low


def pair_with_discordant(b01: int, b10: int, concordant: int = 5):
    """Vectors a, b with exactly b01 (a=0,b=1) and b10 (a=1,b=0) discordant items."""
    a = [0] * b01 + [1] * b10 + [1] * concordant + [0] * concordant
    b = [1] * b01 + [0] * b10 + [1] * concordant + [0] * concordant
    return a, b


# ----------------------------------------------------------------------- accuracy_ci


def test_accuracy_point_estimate_hand_value():
    est = accuracy_ci([1, 1, 0, 0])
    assert est.value == 0.5
    assert est.n == 4
    assert est.ci_low <= 0.5 <= est.ci_high


def test_accuracy_accepts_bools_and_numpy():
    assert accuracy_ci([True, False, True, True]).value == 0.75
    assert accuracy_ci(np.array([1, 0, 1, 1], dtype=np.int8)).value == 0.75


def test_same_seed_gives_identical_ci_and_other_seed_differs():
    x = np.random.default_rng(1).integers(0, 2, 300)
    assert accuracy_ci(x, seed=7) == accuracy_ci(x, seed=7)
    assert accuracy_ci(x, seed=7) != accuracy_ci(x, seed=8)


def test_ci_narrows_with_n():
    pattern = [1, 1, 1, 0]  # accuracy 0.75 at every size
    small = accuracy_ci(pattern * 10)
    large = accuracy_ci(pattern * 1000)
    assert small.value == large.value == 0.75
    assert width(large) < width(small) / 5  # ~sqrt(100) = 10x narrower in theory


def test_ci_width_matches_binomial_standard_error():
    # p=0.5, n=400: normal-theory 95% width is 2 * 1.96 * sqrt(0.25 / 400) = 0.098.
    est = accuracy_ci([0, 1] * 200, n_boot=4000)
    assert 0.085 < width(est) < 0.11
    assert est.ci_low < 0.5 < est.ci_high


def test_alpha_controls_level():
    x = [0, 1, 1] * 50
    assert width(accuracy_ci(x, alpha=0.01)) > width(accuracy_ci(x, alpha=0.05)) > width(accuracy_ci(x, alpha=0.3))


def test_all_equal_inputs_give_zero_width_ci():
    for value in (0, 1):
        est = accuracy_ci([value] * 17)
        assert (est.value, est.ci_low, est.ci_high) == (value, value, value)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(0, 2**32 - 1))
def test_ci_contains_estimate_and_stays_in_unit_interval(correct, seed):
    est = accuracy_ci(correct, n_boot=300, seed=seed)
    assert 0.0 <= est.ci_low <= est.value <= est.ci_high <= 1.0
    assert est.value == sum(correct) / len(correct)


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "empty"),
        ([0, 1, 2], "only 0/1"),
        ([[0, 1], [1, 0]], "1-D"),
        (["a", "b"], "bools or 0/1"),
    ],
)
def test_accuracy_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        accuracy_ci(bad)


@pytest.mark.parametrize("kwargs", [{"n_boot": 0}, {"n_boot": 2.5}, {"alpha": 0.0}, {"alpha": 1.0}])
def test_accuracy_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        accuracy_ci([0, 1], **kwargs)


# --------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize(
    "b01, b10, expected",
    [
        (1, 6, 2 * (1 + 7) / 128),  # 0.125
        (6, 1, 0.125),  # two-sided: symmetric
        (0, 5, 2 * (1 / 32)),  # 0.0625
        (0, 10, 2 / 1024),
        (3, 3, 1.0),  # 2 * P(X <= 3 | n=6) > 1 -> capped
        (0, 0, 1.0),  # no discordant pairs
        (2, 3, 1.0),
    ],
)
def test_mcnemar_exact_hand_values(b01, b10, expected):
    assert mcnemar_exact(b01, b10) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_matches_fraction_arithmetic_for_many_pairs():
    # 40 vs 70 discordant items: compare with an exact rational computation.
    tail = sum(Fraction(math.comb(110, k), 2**110) for k in range(41))
    assert mcnemar_exact(40, 70) == pytest.approx(float(2 * tail), rel=1e-12)
    assert 0 < mcnemar_exact(40, 70) < 0.01


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


# ------------------------------------------------------------------ paired difference


@pytest.mark.parametrize("b01, b10, p", [(1, 6, 0.125), (0, 5, 0.0625), (0, 0, 1.0)])
def test_paired_difference_counts_discordant_pairs_and_p_value(b01, b10, p):
    a, b = pair_with_discordant(b01, b10)
    est = paired_difference(a, b)
    assert est.discordant == (b01, b10)
    assert est.p_value == pytest.approx(p, rel=1e-12)
    assert est.value == pytest.approx((b10 - b01) / len(a))
    assert est.n == len(a)


def test_paired_difference_of_identical_vectors_is_exactly_zero():
    a = np.random.default_rng(0).integers(0, 2, 50)
    est = paired_difference(a, a)
    assert (est.value, est.ci_low, est.ci_high, est.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_uses_the_same_indices_for_both_vectors():
    # With b all wrong, the per-item differences equal a, so a paired bootstrap with the
    # same seed must reproduce accuracy_ci(a) exactly (an unpaired one would not).
    a = np.random.default_rng(3).integers(0, 2, 80)
    paired = paired_difference(a, np.zeros_like(a), seed=11)
    single = accuracy_ci(a, seed=11)
    assert (paired.value, paired.ci_low, paired.ci_high) == (single.value, single.ci_low, single.ci_high)


def test_paired_ci_is_much_narrower_than_naive_unpaired_ci():
    rng = np.random.default_rng(0)
    n = 1000
    a = (rng.random(n) < 0.6).astype(int)
    # b differs from a on 10% of the items (a right -> b wrong): a true gain of 0.1.
    b = a.copy()
    flip = rng.choice(np.flatnonzero(a == 1), size=n // 10, replace=False)
    b[flip] = 0

    paired = paired_difference(a, b)
    assert paired.value == pytest.approx(0.1)
    assert paired.ci_low > 0.05  # clearly positive
    assert paired.p_value < 1e-20  # 0 vs 100 discordant items

    # Naive: resample a and b independently, ignoring that they share items.
    boot = np.random.default_rng(1)
    diffs = [a[boot.integers(0, n, n)].mean() - b[boot.integers(0, n, n)].mean() for _ in range(2000)]
    naive_width = np.subtract(*np.quantile(diffs, [0.975, 0.025]))
    assert width(paired) < 0.5 * naive_width


def test_paired_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"a_correct has 3 items, b_correct has 2 items"):
        paired_difference([1, 0, 1], [1, 0])


def test_paired_empty_input():
    with pytest.raises(ValueError, match="empty"):
        paired_difference([], [])


# ------------------------------------------------------------ contrast of differences


def test_contrast_hand_value():
    a1, b1 = [1, 1, 1, 0], [0, 1, 1, 0]  # gain 0.25
    a2, b2 = [1, 0, 0, 1], [0, 0, 1, 1]  # gain 0.00
    est = contrast_of_differences(a1, b1, a2, b2)
    assert est.value == pytest.approx(0.25)
    assert est.n == 4
    assert est.ci_low <= est.value <= est.ci_high


def test_contrast_with_null_second_gain_equals_paired_difference():
    rng = np.random.default_rng(5)
    a1, b1, same = (rng.integers(0, 2, 120) for _ in range(3))
    contrast = contrast_of_differences(a1, b1, same, same, seed=4)
    paired = paired_difference(a1, b1, seed=4)
    assert (contrast.value, contrast.ci_low, contrast.ci_high) == (paired.value, paired.ci_low, paired.ci_high)


def test_contrast_of_identical_models_is_exactly_zero():
    rng = np.random.default_rng(6)
    a, b = rng.integers(0, 2, 40), rng.integers(0, 2, 40)
    est = contrast_of_differences(a, b, a, b)
    assert (est.value, est.ci_low, est.ci_high) == (0.0, 0.0, 0.0)


def test_contrast_shares_items_between_models():
    # Both models gain on the same 30% of items (+ noise on a few): the gains are highly
    # correlated, so the contrast is far more precise than either gain alone.
    rng = np.random.default_rng(7)
    n = 600
    b = np.zeros(n, int)
    a1 = (rng.random(n) < 0.3).astype(int)
    a2 = a1.copy()
    a2[rng.choice(n, 20, replace=False)] ^= 1
    contrast = contrast_of_differences(a1, b, a2, b)
    assert width(contrast) < 0.5 * width(paired_difference(a1, b))


def test_contrast_length_mismatch_lists_every_length():
    with pytest.raises(ValueError, match=r"a1 has 2 items, b1 has 2 items, a2 has 3 items, b2 has 2 items"):
        contrast_of_differences([1, 0], [1, 0], [1, 0, 1], [0, 0])


# --------------------------------------------------------------------------- Estimate


def test_estimate_to_dict_is_plain_and_omits_unset_fields():
    plain = accuracy_ci([1, 0, 1]).to_dict()
    assert set(plain) == {"value", "ci_low", "ci_high", "n"}
    paired = paired_difference(*pair_with_discordant(1, 6)).to_dict()
    assert paired["discordant"] == [1, 6]
    assert paired["p_value"] == pytest.approx(0.125)
    json.dumps(paired)  # serialisable as-is


# ------------------------------------------- paired_bootstrap_sums, percentile_interval


def test_paired_bootstrap_sums_draw_the_items_of_the_estimators():
    """Same seed, same items: the sums reproduce accuracy_ci, paired_difference and contrast_of_differences,
    across several chunks of replicates (3000 items: 1398 replicates per chunk)."""
    rng = np.random.default_rng(11)
    a1, b1, a2, b2 = ((rng.random(3000) < p).astype(int) for p in (0.6, 0.5, 0.45, 0.4))
    s1, t1, s2, t2 = paired_bootstrap_sums([a1, b1, a2, b2], n_boot=3000, seed=4)
    assert all(s.dtype == np.int64 and s.shape == (3000,) for s in (s1, t1, s2, t2))
    kw = {"n_boot": 3000, "seed": 4}
    acc = accuracy_ci(a1, **kw)
    assert percentile_interval(s1 / 3000) == (acc.ci_low, acc.ci_high)
    gain = paired_difference(a1, b1, **kw)
    assert percentile_interval((s1 - t1) / 3000) == (gain.ci_low, gain.ci_high)
    contrast = contrast_of_differences(a1, b1, a2, b2, **kw)
    assert percentile_interval(((s1 - t1) - (s2 - t2)) / 3000) == (contrast.ci_low, contrast.ci_high)
    # one vector or four: the same draws
    assert (paired_bootstrap_sums([b2], **kw)[0] == t2).all()


def test_paired_bootstrap_sums_accepts_bools_and_is_seeded():
    x = [True, False, True, True]
    first = paired_bootstrap_sums([x, [1, 0, 0, 1]], n_boot=50, seed=2)
    again = paired_bootstrap_sums([x, [1, 0, 0, 1]], n_boot=50, seed=2)
    assert all((f == g).all() for f, g in zip(first, again))
    assert ((first[0] >= 0) & (first[0] <= 4)).all() and (first[0] != first[0][0]).any()


@pytest.mark.parametrize("vectors, n_boot, message", [
    ([], 10, "vectors is empty"),
    ([[1, 0], []], 10, r"vectors\[1\] must be a non-empty 1-D sequence"),
    ([[0.5, 1.0]], 10, r"vectors\[0\] must hold bools or integers"),
    ([[1, 0, 1], [1, 0]], 10, r"vectors\[0\] has 3 items, vectors\[1\] has 2 items"),
    ([[1, 0]], 0, "n_boot must be a positive integer, got 0"),
])
def test_paired_bootstrap_sums_rejects_bad_input(vectors, n_boot, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap_sums(vectors, n_boot=n_boot)


def test_percentile_interval():
    assert percentile_interval(np.arange(101) / 100) == pytest.approx((0.025, 0.975))
    assert percentile_interval([0.3], alpha=0.1) == (0.3, 0.3)
    with pytest.raises(ValueError, match="replicates is empty"):
        percentile_interval([])
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        percentile_interval([0.1, 0.2], alpha=1.0)


# ----------------------------------------------------------- offline evaluate modules


@pytest.fixture(scope="module")
def metrics():
    from evalsuite.metrics import load_metric

    return {"accuracy_ci": load_metric("accuracy_ci"), "paired_gain": load_metric("paired_gain")}


def test_accuracy_ci_module_matches_stats(metrics):
    rng = np.random.default_rng(8)
    refs = rng.integers(0, 4, 200)
    preds = np.where(rng.random(200) < 0.7, refs, (refs + 1) % 4)
    out = metrics["accuracy_ci"].compute(predictions=preds.tolist(), references=refs.tolist(), seed=3, n_boot=500)
    est = accuracy_ci(preds == refs, seed=3, n_boot=500)
    assert out == {"accuracy": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": 200}


def test_paired_gain_module_matches_stats(metrics):
    a, b = pair_with_discordant(1, 6)  # correctness pattern -> predictions
    refs = [0] * len(a)
    preds1 = [0 if ok else 1 for ok in a]
    preds2 = [0 if ok else 2 for ok in b]
    out = metrics["paired_gain"].compute(predictions1=preds1, predictions2=preds2, references=refs)
    est = paired_difference(a, b)
    assert out["gain"] == est.value
    assert (out["ci_low"], out["ci_high"], out["n"]) == (est.ci_low, est.ci_high, len(a))
    assert out["p_value"] == pytest.approx(0.125)
    assert out["discordant"] == [1, 6]
    assert out["accuracy1"] - out["accuracy2"] == pytest.approx(out["gain"])


def test_metric_module_supports_add_batch(metrics):
    m = metrics["accuracy_ci"]
    m.add_batch(predictions=[1, 1], references=[1, 0])
    m.add_batch(predictions=[0, 0], references=[0, 1])
    assert m.compute()["accuracy"] == 0.5


def test_metric_module_reports_empty_input(metrics):
    with pytest.raises(ValueError, match="empty"):
        metrics["paired_gain"].compute(predictions1=[], predictions2=[], references=[])


def test_metric_info_is_documented(metrics):
    info = metrics["paired_gain"].info
    assert "McNemar" in info.description and "mcnemar1947" in info.citation
    assert "predictions1" in info.inputs_description
    assert set(info.features) == {"predictions1", "predictions2", "references"}


def test_load_metric_unknown_name_suggests_close_match():
    from evalsuite.metrics import metric_path

    with pytest.raises(ValueError, match=r"Did you mean 'paired_gain'"):
        metric_path("paired_gian")
    with pytest.raises(ValueError, match="Available metrics: accuracy_ci, paired_gain"):
        metric_path("bleu")
    assert metric_path("accuracy-ci").name == "accuracy_ci.py"


def test_sign_flip_test_is_mcnemar_on_two_accuracies_and_seeded_beyond_the_exact_range():
    from evalsuite.stats import SIGN_FLIP_EXACT, sign_flip_p

    for b01, b10 in ((0, 4), (3, 10), (0, 0), (7, 7), (1, 15)):
        diffs = [1] * b10 + [-1] * b01 + [0] * 50
        assert sign_flip_p(diffs) == pytest.approx(mcnemar_exact(b01, b10), abs=1e-12), (b01, b10)
    many = [1] * 30 + [-1] * 15 + [0] * 200  # 45 > SIGN_FLIP_EXACT: random patterns, seeded
    assert 45 > SIGN_FLIP_EXACT
    assert sign_flip_p(many, seed=1) == sign_flip_p(many, seed=1)
    assert sign_flip_p(many, seed=1) == pytest.approx(mcnemar_exact(15, 30), abs=0.006)
    import itertools

    d = [2, 2, 1, -1, 2, 1, 1, 2, 0]  # integer contrasts of differences: every sign pattern, by hand
    hits = sum(abs(sum(s * x for s, x in zip(signs, d[:8]))) >= 10 for signs in itertools.product((1, -1), repeat=8))
    assert sign_flip_p(d) == hits / 256 and 0 < hits < 256
    with pytest.raises(ValueError, match="finite"):
        sign_flip_p([1.0, float("nan")])


def test_a_verdict_needs_the_paired_test_as_well_as_the_interval():
    """4 items of 300 that differ, all one way: the percentile interval clears 0, the exact test gives 0.125.
    Such a contrast is inconclusive; 30 against 10 is supported; a contrast of differences carries its
    sign-flip p-value and is judged the same way."""
    from evalsuite.report.evaluation import verdict

    few = paired_difference([1] * 4 + [0] * 296, [0] * 300)
    assert few.ci_low > 0 and few.p_value == 0.125
    assert verdict(few.to_dict()) == "inconclusive"
    assert verdict(paired_difference([1] * 4 + [0] * 296, [0] * 300).to_dict() | {"p_value": 0.01}) == "supported"
    many = paired_difference([1] * 30 + [0] * 10 + [0] * 260, [0] * 30 + [1] * 10 + [0] * 260)
    assert many.ci_low > 0 and many.p_value < 0.05 and verdict(many.to_dict()) == "supported"
    zero = [0] * 300
    contrast = contrast_of_differences([1] * 4 + [0] * 296, zero, zero, zero)
    assert contrast.ci_low > 0 and contrast.p_value == 0.125 and verdict(contrast.to_dict()) == "inconclusive"
    flipped = contrast_of_differences(zero, [1] * 4 + [0] * 296, zero, zero)
    assert flipped.ci_high < 0 and verdict(flipped.to_dict()) == "inconclusive"
