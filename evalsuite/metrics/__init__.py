"""Offline `evaluate` metrics of the evaluation suite.

Each ``*.py`` module in this folder (other than this one) is an `evaluate.Metric` script
that takes its statistics from `evalsuite.stats` and its `MetricInfo` from :func:`metric_info`.  Hub metrics such as ``evaluate.load("accuracy")`` need
network access, whereas a script loaded *by path* works offline, so
:func:`load_metric` resolves a short name to the file shipped in this package and hands
that path to `evaluate.load`.

`evaluate` is imported lazily: it pulls in `transformers` and `torch` (several seconds),
and code that only needs the names in :data:`AVAILABLE` should not pay for that.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_recipes.hints import did_you_mean

if TYPE_CHECKING:  # pragma: no cover - typing only
    import evaluate

__all__ = ["AVAILABLE", "BOOTSTRAP_CITATION", "load_metric", "metric_info", "metric_path"]

_HERE = Path(__file__).resolve().parent

#: Names accepted by :func:`load_metric`, discovered from the scripts in this folder.
AVAILABLE: tuple[str, ...] = tuple(sorted(p.stem for p in _HERE.glob("*.py") if not p.stem.startswith("_")))


def metric_path(name: str) -> Path:
    """Absolute path of the metric script called ``name`` (``"accuracy_ci"``, ...).

    ``"accuracy-ci"`` and ``"accuracy_ci.py"`` are accepted too.

    Raises:
        ValueError: unknown name; the message suggests the closest known names.
    """
    key = name.strip().removesuffix(".py").replace("-", "_")
    if key not in AVAILABLE:
        hint = did_you_mean(key, AVAILABLE, n=3, cutoff=0.5, sentence=True)
        raise ValueError(f"Unknown metric {name!r}.{hint} Available metrics: {', '.join(AVAILABLE)}.")
    return _HERE / f"{key}.py"


BOOTSTRAP_CITATION = """\
@book{efron1993bootstrap,
  title     = {An Introduction to the Bootstrap},
  author    = {Efron, Bradley and Tibshirani, Robert J.},
  publisher = {Chapman and Hall/CRC},
  year      = {1993}
}
"""
"""The reference of the percentile bootstrap every metric here reports its interval with."""


def metric_info(description: str, citation: str, inputs_description: str,
                columns: tuple[str, ...]) -> "evaluate.MetricInfo":
    """The `evaluate.MetricInfo` of a metric script here: integer label `columns` in numpy format
    (`_compute` gets arrays instead of Python lists)."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(description=description, citation=citation, inputs_description=inputs_description,
                               features=datasets.Features({c: datasets.Value("int64") for c in columns}),
                               format="numpy")


def load_metric(name: str, **kwargs: Any) -> "evaluate.EvaluationModule":
    """Load one of this package's metrics offline with ``evaluate.load(path)``.

    Keyword arguments are forwarded to `evaluate.load`.  ``keep_in_memory`` defaults to
    True: our metrics are computed in a single process, and keeping predictions in
    memory avoids Arrow cache files under ``~/.cache/huggingface/evaluate`` (and the
    cache-file collisions between concurrent runs that come with them).

    Example:
        >>> metric = load_metric("paired_gain")
        >>> metric.compute(predictions1=[1, 0], predictions2=[0, 0], references=[1, 1])["gain"]
        0.5
    """
    path = metric_path(name)
    import evaluate  # lazy: see module docstring

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(path), **kwargs)
