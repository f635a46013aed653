"""The evaluation report's resampling: `report.relative_gain` draws its replicates through
`stats.paired_bootstrap_sums` and gives exactly the numbers of the loop it ran itself before; the per-item
helpers the study report shares with it (`item_correctness`, `uninformative_reason`)."""

from __future__ import annotations

import numpy as np
import pytest

from evalsuite import stats
from evalsuite.report import evaluation as report
from evalsuite.report.evaluation import item_correctness, relative_gain, uninformative_reason


def _chunked_vectors() -> tuple[list[int], list[int]]:
    """5000 items: (1 << 22) // 5000 = 838 replicates per chunk, so 2000 replicates take three chunks."""
    rng = np.random.default_rng(123)
    base = (rng.random(5000) < 0.4).astype(int)
    vcot = (rng.random(5000) < 0.55).astype(int)
    return vcot.tolist(), base.tolist()


# (vcot, base, n_boot, seed) -> relative_gain's result. Obtained by running relative_gain as it was at commit
# 4536d7c, before it called stats.paired_bootstrap_sums (its own loop: np.random.default_rng(seed).integers(0,
# n, size=(rows, n)) in chunks of (1 << 22) // n replicates, resamples without headroom left out), and
# printing the floats with repr. The same n_boot and seed must keep giving exactly these.
PINNED = [
    ([1] * 6 + [0] * 4, [1, 1] + [0] * 8, 500, 0,
     {"value": 0.5, "ci_low": 0.14285714285714285, "ci_high": 0.8571428571428571, "n": 10}),
    # many resamples without headroom, left out
    ([1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 1], 1000, 7, {"value": 0.0, "ci_low": -2.0, "ci_high": 1.0, "n": 6}),
    (*_chunked_vectors(), 2000, 3,
     {"value": 0.2606241699867198, "ci_low": 0.2320545251374016, "ci_high": 0.2893123447804337, "n": 5000}),
    # of two replicates, the first has no headroom (left out), the second gives 0
    ([1] * 8 + [0, 0], [1] * 9 + [0], 2, 0, {"value": -1.0, "ci_low": 0.0, "ci_high": 0.0, "n": 10}),
    # neither replicate has headroom: the CI is the point
    ([1] * 8 + [0, 0], [1] * 9 + [0], 2, 3, {"value": -1.0, "ci_low": -1.0, "ci_high": -1.0, "n": 10}),
]


@pytest.mark.parametrize("vcot, base, n_boot, seed, expected", PINNED)
def test_relative_gain_gives_the_numbers_of_its_former_own_loop(vcot, base, n_boot, seed, expected):
    assert relative_gain(vcot, base, n_boot=n_boot, seed=seed) == expected


def test_the_last_pins_are_the_cases_they_claim():
    """The two short cases above exercise the headroom rule: seed 0 draws one replicate without headroom,
    seed 3 two."""
    for seed, without in ((0, [True, False]), (3, [True, True])):
        _, sb = stats.paired_bootstrap_sums([[1] * 8 + [0, 0], [1] * 9 + [0]], n_boot=2, seed=seed)
        assert (sb == 10).tolist() == without


def test_relative_gain_resamples_through_stats(monkeypatch):
    calls = []

    def recording(vectors, **kw):
        calls.append(kw)
        return stats.paired_bootstrap_sums(vectors, **kw)

    monkeypatch.setattr(report, "paired_bootstrap_sums", recording)
    relative_gain([1, 1, 0, 1], [0, 1, 0, 0], n_boot=50, seed=4)
    assert calls == [{"n_boot": 50, "seed": 4}]


def test_relative_gain_draws_the_items_of_paired_difference():
    """The same seed resamples the same items as the paired gain it is printed beside."""
    vcot, base = _chunked_vectors()
    vcot, base = vcot[:300], base[:300]
    sv, sb = stats.paired_bootstrap_sums([vcot, base], n_boot=400, seed=5)
    gain = stats.paired_difference(vcot, base, n_boot=400, seed=5)
    assert stats.percentile_interval((sv - sb) / 300) == (gain.ci_low, gain.ci_high)


def test_relative_gain_refuses_an_invalid_n_boot():
    with pytest.raises(ValueError, match="n_boot must be a positive integer, got 0"):
        relative_gain([1, 0], [0, 0], n_boot=0)


# --- the helpers the study report shares ----------------------------------------------------------
class _Rows:
    """A checkpoint as `item_correctness` reads it: prediction rows per task."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def predictions(self, task: str) -> list[dict]:
        return self.rows if task == "vcot" else []


def test_item_correctness_filters_rows_by_frames_condition_and_kind():
    c = _Rows([{"item": "a", "frames": 5, "condition": "vcot", "kind": "temporal", "correct": True},
               {"item": "a", "frames": 5, "condition": "base", "kind": "temporal", "correct": False},
               {"item": "b", "frames": 5, "condition": "vcot", "kind": "static", "correct": False},
               {"item": "c", "frames": 10, "condition": "vcot", "kind": "static", "correct": True},
               {"item": "d", "frames": 5, "condition": "vcot", "error": "timeout"},
               {"frames": 5, "condition": "vcot", "correct": True}])  # no item: not a prediction
    assert item_correctness(c, "vcot", 5, "vcot") == {"a": 1, "b": 0}
    assert item_correctness(c, "vcot", 5, "vcot", "temporal") == {"a": 1}
    assert item_correctness(c, "vcot", condition="vcot") == {"a": 1, "b": 0, "c": 1}
    assert item_correctness(c, "iraven") == {}


def test_uninformative_reason_names_the_candidate_or_the_recorded_reason():
    assert uninformative_reason({"position_bias": {"value": 0.734, "letter": "C"}}) == \
        "position bias 73% on candidate C"
    assert uninformative_reason({"position_bias": {"value": 0.9, "index": 1}}) == "position bias 90% on candidate B"
    assert uninformative_reason({"position_bias": 0.9, "informative_reason": "answers sit on A"}) == "answers sit on A"
    assert uninformative_reason({}) == "answers sit on one candidate"
