"""Accuracy with a percentile-bootstrap confidence interval, as an offline `evaluate` metric.

`evaluate.load("accuracy")` needs the Hub, so the evaluation suite ships its own
module and loads it by path (see `evalsuite.metrics.load_metric`).  `evaluate` copies
this file into its modules cache before importing it, which is why the statistics are
imported absolutely from the installed `evalsuite` package rather than relatively.
"""

import evaluate

from evalsuite.metrics import BOOTSTRAP_CITATION, metric_info
from evalsuite.stats import accuracy_ci

_DESCRIPTION = """\
Accuracy (fraction of items where the prediction equals the reference) together with a
percentile-bootstrap confidence interval over items.  The interval is deterministic for
a given `seed`.  Predictions and references are integer labels (for multiple-choice
benchmarks, the option index; map answer letters to indices first).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted labels, one per item.
    references (`list` of `int`): Ground-truth labels, aligned with `predictions`.
    n_boot (`int`, defaults to 2000): Number of bootstrap replicates.
    seed (`int`, defaults to 0): Seed of the bootstrap resampling.
    alpha (`float`, defaults to 0.05): Two-sided level; 0.05 gives a 95% interval.

Returns:
    accuracy (`float`): Fraction of correct items.
    ci_low (`float`): Lower bound of the interval.
    ci_high (`float`): Upper bound of the interval.
    n (`int`): Number of items.

Examples:
    >>> metric = load_metric("accuracy_ci")
    >>> metric.compute(predictions=[0, 1, 2, 0], references=[0, 1, 1, 1])["accuracy"]
    0.5
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AccuracyCI(evaluate.Metric):
    """Accuracy with a bootstrap confidence interval (see module docstring)."""

    def _info(self):
        return metric_info(_DESCRIPTION, BOOTSTRAP_CITATION, _KWARGS_DESCRIPTION, ("predictions", "references"))

    def _compute(self, predictions, references, n_boot=2000, seed=0, alpha=0.05):
        correct = predictions == references
        est = accuracy_ci(correct, n_boot=n_boot, seed=seed, alpha=alpha)
        return {"accuracy": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": est.n}
