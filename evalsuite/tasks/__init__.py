"""The task registry: every evaluation task by name, written out in one place.

    python -m evalsuite vcot ckpt/run      # one task
    python -m evalsuite all ckpt/          # every task below, on every checkpoint

To add a task: write `evalsuite/tasks/<name>.py` with a
`Task` subclass (contract in `evalsuite.tasks.base`) and add one line to `TASKS`.
"""

from __future__ import annotations

from evalsuite.config import did_you_mean
from evalsuite.tasks.base import Task
from evalsuite.tasks.iraven import IRavenTask
from evalsuite.tasks.shuffle import ShuffleTask
from evalsuite.tasks.vcot import VCoTTask

TASKS: dict[str, type[Task]] = {
    "vcot": VCoTTask,
    "shuffle": ShuffleTask,
    "iraven": IRavenTask,
}


def get_task(name: str) -> type[Task]:
    """The task class called `name`; an unknown name answers with the closest known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise did_you_mean("task", name, TASKS) from None


__all__ = ["TASKS", "Task", "get_task"]
