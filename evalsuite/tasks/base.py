"""The contract between an evaluation task and the runner.

A task is a small class in a file of its own. The runner (`evalsuite.runner`) owns everything that
is the same for every task: finding what is already done, splitting items across ranks, appending
and merging predictions, resuming, writing metrics.json, MLflow. A task only says

- `settings()`  which settings its results depend on (a finished evaluation with equal settings is
                skipped; other settings start over), given the checkpoint's identity and how its frames
                are fed (`FrameInputs`: video_input and max_pixels resolved against its run.json);
- `check(subject)` (optional) refuses a checkpoint the task cannot run on, for every checkpoint
                before any item of any checkpoint runs;
- `items()`     the items to evaluate (listed cheaply; `self.problems` lists items that cannot be);
- `keys(item)`  the prediction rows one item yields (unique strings, in the canonical order);
- `predict(subject, item, todo)` the rows for the keys in `todo` (each row a JSON dict with `key`);
- `summarize(rows)` the metrics from all rows, and `flat_metrics(summary)` their MLflow names.

`subject` is the evaluated checkpoint (`evalsuite.runner.Subject`: `.model`, `.processor`, `.chat`,
`.info`), loaded on first use so that a finished checkpoint is never loaded. `resources` holds what
is shared across checkpoints (a fixed infill generator, the rephraser, the judge, the cache dir).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

from evalsuite.config import EvalConfig, FrameInputs


class Task(ABC):
    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, cfg: EvalConfig, resources: Any):
        self.cfg, self.resources = cfg, resources
        self.problems: list[dict] = []

    @abstractmethod
    def settings(self, subject_info: dict, inputs: FrameInputs | None = None) -> dict:
        """JSON-able settings the results depend on (includes the checkpoint's identity; `inputs`: how its
        frames are fed, default images at their rendered or decoded size)."""

    def check(self, subject) -> None:
        """Raise `ConfigError` when this task cannot run on `subject` (called before any item runs)."""

    @abstractmethod
    def items(self) -> Sequence[Any]:
        """The items to evaluate, in a fixed order; each has an `id`."""

    @abstractmethod
    def keys(self, item) -> list[str]:
        """Keys of the prediction rows `item` yields, in canonical order."""

    @abstractmethod
    def predict(self, subject, item, todo: list[str]) -> list[dict]:
        """One row (with its `key`) per key in `todo`."""

    @abstractmethod
    def summarize(self, rows: list[dict]) -> dict:
        """metrics.json's `metrics` from every row of the evaluation."""

    @abstractmethod
    def flat_metrics(self, summary: dict) -> dict[str, float]:
        """MLflow metric names (prefixed by the task name) -> values."""

    @staticmethod
    def headline(summary: dict) -> str:
        """A one-line digest of `summarize`'s result for the log (optional)."""
        return ""

    def extra_outputs(self) -> dict:
        """Anything else metrics.json should hold (e.g. the benchmark's unusable items)."""
        return {"problems": self.problems}
