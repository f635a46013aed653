"""Which share of the items this process evaluates, on which device, and a barrier to meet the others.

`accelerate launch -m evalsuite ...` (CPU: `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu
--num_processes 2 -m evalsuite ...`) starts one process per rank with RANK/WORLD_SIZE set. Every rank
takes items `rank::world_size`, appends its predictions to its own part file, and the main process
merges after a barrier. A plain `python -m evalsuite` is one rank and never touches torch.distributed.

Every collective (the barriers) waits at most `EVALSUITE_PG_TIMEOUT_S` seconds (default 1800, as the
trainer's `process_group_timeout_s`) for the slowest rank; past that the waiting ranks fail with a
timeout error instead of hanging forever on a rank that died or hung. A rank's share of one task runs
between two barriers, so at real scale (a 7B model generating infills for hundreds of videos) raise it:
    EVALSUITE_PG_TIMEOUT_S=14400 accelerate launch ... -m evalsuite all ckpt/
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from evalsuite.config import ConfigError

T = TypeVar("T")

TIMEOUT_ENV = "EVALSUITE_PG_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800
"""Seconds a barrier waits for the slowest rank (the trainer's `process_group_timeout_s` default)."""


def collective_timeout(environ=os.environ) -> datetime.timedelta:
    """The process group's timeout: `EVALSUITE_PG_TIMEOUT_S` seconds, else `DEFAULT_TIMEOUT_S`."""
    raw = environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = int(raw)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: expected a whole number of seconds >= 1 "
                          f"(default {DEFAULT_TIMEOUT_S})")
    return datetime.timedelta(seconds=seconds)


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    _barrier: Callable[[], None] | None = None
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items; strided so that every rank gets a similar mix of item types."""
        return list(items[self.rank::self.world_size])

    def barrier(self) -> None:
        if self._barrier is not None:
            self._barrier()

    def from_main(self, value):
        """The main rank's `value` on every rank (a picklable object)."""
        import torch.distributed as dist

        if self.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return value  # one process (ranks simulated in one process share nothing to send)
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @classmethod
    def from_env(cls) -> "Ranks":
        import torch

        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=device)
        from accelerate import PartialState

        cpu = device == "cpu"
        timeout = collective_timeout()  # before anything starts: a bad value fails at once
        # A bare PartialState does not read ACCELERATE_USE_CPU (Accelerator does): without cpu=True it
        # reports DistributedType.NO under `accelerate launch --multi_gpu` on CPU and its barrier returns
        # at once. gloo is named for the same reason as in training (train/lora.py): without it
        # accelerate and the process group can disagree on the world size. `timeout` goes on to
        # torch.distributed.init_process_group and bounds every barrier.
        state = PartialState(cpu=True, backend="gloo", timeout=timeout) if cpu else PartialState(timeout=timeout)
        if state.num_processes != world or state.distributed_type.name == "NO":
            raise RuntimeError(f"WORLD_SIZE={world} but accelerate set up {state.num_processes} process(es) "
                               f"({state.distributed_type}); launch with `accelerate launch --multi_gpu` "
                               f"(CPU: ACCELERATE_USE_CPU=1)")
        return cls(state.process_index, state.num_processes, state.wait_for_everyone, device)
