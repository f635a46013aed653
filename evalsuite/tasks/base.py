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
- `summarize(rows)` the metrics from all rows, and `flat_metrics(summary)` their MLflow names;
- `plan(subject, work, seen)` (optional) how much work the rows of `work` will cost (`Workload`): the
                runner prints it per checkpoint and task before anything runs. The default counts one
                prompt per row and derives infills and frames from the task's attributes (see `plan`).

`subject` is the evaluated checkpoint (`evalsuite.runner.Subject`: `.model`, `.processor`, `.chat`,
`.info`), loaded on first use so that a finished checkpoint is never loaded. `resources` holds what
is shared across checkpoints (a fixed infill generator, the rephraser, the judge, the cache dir).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Sequence

from evalsuite.config import EvalConfig, FrameInputs

# Model calls of one `evalsuite.scoring.score_options`, at most: the prompt once (its KV cache kept), then
# each option's continuation, one after another, against that cache (an option is always at least two
# tokens, its text and the template's end of turn). Options batched over copies of the cache (when the copies
# fit --option_batch_mb, which depends on the prompt's length) take one call for all: 2 per prompt.
# `scoring.forward_passes(n_options)`, when scoring defines it, takes precedence; with the number of options
# unknown the count assumes one option call.


def loglik_forwards(n_options: int | None) -> int:
    """Forward passes (model calls) that loglik scoring makes for one prompt with `n_options` options."""
    from evalsuite import scoring

    count = getattr(scoring, "forward_passes", None)
    if count is not None and n_options:
        return int(count(n_options))
    return 1 + (n_options or 1)


@dataclass
class Workload:
    """What evaluating some rows of one task on one checkpoint will cost (`Task.plan`)."""
    items: int = 0
    prompts: int = 0
    """Rows to predict: one prompt each."""
    forwards: int = 0
    """loglik scoring: model forward passes (calls), at most (batched options take fewer)."""
    generations: int = 0
    """generate scoring: answers generated (one per prompt)."""
    judge_calls: int = 0
    """At most: the judge is asked only about answers extraction cannot read."""
    infills: int = 0
    """Generator prompts for infills and captions the infill cache lacks (2 per pair of frames, 1 per caption)."""
    rephrasings: int = 0
    """Rephraser prompts (1 per generated infill, with --rephraser)."""
    frame_decodes: int = 0
    """Video frames to decode (not in the frame cache); rendered synthetic frames are not counted."""

    def __add__(self, other: "Workload") -> "Workload":
        return Workload(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


class Task(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    n_options: ClassVar[int | None] = None
    """Options scored per prompt when items carry no `options` list (I-RAVEN: 8 letters)."""
    uses_judge: ClassVar[bool] = True
    """Whether generate scoring may ask `--judge` about an answer (`Resources.judge_for`)."""

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

    # ------------------------------------------------------------------ the plan printed before a run

    def plan(self, subject, work: Sequence[tuple[Any, list[str]]], seen: set) -> Workload:
        """The cost of predicting `work` ((item, keys still to predict) pairs) on `subject`, without loading
        or running anything. `seen` collects the infills and frames counted so far in this plan (by earlier
        tasks and checkpoints), so that each is counted once, where it will be made.

        Default: one prompt per key; loglik makes `loglik_forwards(options)` forward passes per prompt,
        generate one generation per prompt (and, with --judge and `uses_judge`, at most one judge call
        each). Tasks over videos add the infills and frame decodes they will cause (`VCoTTask.plan`)."""
        w = Workload(items=len(work), prompts=sum(len(todo) for _, todo in work))
        for item, todo in work:
            if self.cfg.scoring == "loglik":
                options = getattr(item, "options", None)
                w.forwards += len(todo) * loglik_forwards(len(options) if options else self.n_options)
            else:
                w.generations += len(todo)
                w.judge_calls += len(todo) if self.cfg.judge and self.uses_judge else 0
        return w
