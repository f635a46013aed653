"""Offline `evaluate` metrics of the evaluation suite.

Each ``*.py`` module in this folder (other than this one) is a self-contained
`evaluate.Metric` script.  Hub metrics such as ``evaluate.load("accuracy")`` need
network access, whereas a script loaded *by path* works offline, so
:func:`load_metric` resolves a short name to the file shipped in this package and hands
that path to `evaluate.load`.

`evaluate` is imported lazily: it pulls in `transformers` and `torch` (several seconds),
and code that only needs the names in :data:`AVAILABLE` should not pay for that.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import evaluate

__all__ = ["AVAILABLE", "load_metric", "metric_path"]

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
        close = difflib.get_close_matches(key, AVAILABLE, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown metric {name!r}.{hint} Available metrics: {', '.join(AVAILABLE)}.")
    return _HERE / f"{key}.py"


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
