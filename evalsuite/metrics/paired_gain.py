"""Paired accuracy gain of system 1 over system 2, as an offline `evaluate` metric.

Both systems answer the same items, so the uncertainty of their difference comes from
a paired bootstrap over items and an exact McNemar test on the discordant items (see
`evalsuite.stats.paired_difference`).  The input names follow the Hub's comparison
modules (`predictions1`, `predictions2`, `references`).  The statistics are imported
absolutely because `evaluate` runs a copy of this file from its modules cache.
"""

import evaluate

from evalsuite.metrics import BOOTSTRAP_CITATION, metric_info
from evalsuite.stats import paired_difference

_DESCRIPTION = """\
Gain in accuracy of system 1 over system 2, `accuracy(predictions1) - accuracy(predictions2)`,
measured on the same items.  The confidence interval is a paired percentile bootstrap
(item indices are resampled once and applied to both systems), and the p-value is the
exact two-sided McNemar test (binomial test on the discordant items).  Labels are
integers (for multiple-choice benchmarks, the option index).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions1 (`list` of `int`): Labels predicted by system 1 (the one whose gain is reported).
    predictions2 (`list` of `int`): Labels predicted by system 2 (the baseline), same items.
    references (`list` of `int`): Ground-truth labels.
    n_boot (`int`, defaults to 2000): Number of bootstrap replicates.
    seed (`int`, defaults to 0): Seed of the bootstrap resampling.
    alpha (`float`, defaults to 0.05): Two-sided level; 0.05 gives a 95% interval.

Returns:
    gain (`float`): accuracy1 - accuracy2.
    ci_low (`float`), ci_high (`float`): Paired bootstrap interval for the gain.
    n (`int`): Number of items.
    p_value (`float`): Exact two-sided McNemar p-value (1.0 without discordant items).
    discordant (`list` of two `int`): [b01, b10]: items only system 2 got right,
        items only system 1 got right.
    accuracy1 (`float`), accuracy2 (`float`): The two accuracies.

Examples:
    >>> metric = load_metric("paired_gain")
    >>> out = metric.compute(predictions1=[1, 1, 1, 0], predictions2=[1, 0, 0, 0], references=[1, 1, 1, 1])
    >>> out["gain"], out["discordant"]
    (0.5, [0, 2])
"""

_CITATION = """\
@article{mcnemar1947note,
  title   = {Note on the sampling error of the difference between correlated proportions or percentages},
  author  = {McNemar, Quinn},
  journal = {Psychometrika},
  volume  = {12},
  number  = {2},
  pages   = {153--157},
  year    = {1947}
}
""" + BOOTSTRAP_CITATION


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PairedGain(evaluate.Metric):
    """Paired accuracy gain with bootstrap CI and exact McNemar p-value (see module docstring)."""

    def _info(self):
        return metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION,
                           ("predictions1", "predictions2", "references"))

    def _compute(self, predictions1, predictions2, references, n_boot=2000, seed=0, alpha=0.05):
        correct1 = predictions1 == references
        correct2 = predictions2 == references
        est = paired_difference(correct1, correct2, n_boot=n_boot, seed=seed, alpha=alpha)
        out = est.to_dict()
        return {
            "gain": out["value"],
            "ci_low": out["ci_low"],
            "ci_high": out["ci_high"],
            "n": out["n"],
            "p_value": out["p_value"],
            "discordant": out["discordant"],
            "accuracy1": float(correct1.mean()),
            "accuracy2": float(correct2.mean()),
        }
