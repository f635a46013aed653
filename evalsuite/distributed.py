"""Which share of the items this process evaluates, and a barrier to meet the others.

`accelerate launch -m evalsuite ...` (CPU: `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu
--num_processes 2 -m evalsuite ...`) starts one process per rank with RANK/WORLD_SIZE set. Every rank
takes items `rank::world_size`, appends its predictions to its own part file, and the main process
merges after a barrier. A plain `python -m evalsuite` is one rank and never touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    _barrier: Callable[[], None] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items; strided so that every rank gets a similar mix of item types."""
        return list(items[self.rank::self.world_size])

    def barrier(self) -> None:
        if self._barrier is not None:
            self._barrier()

    @classmethod
    def from_env(cls) -> "Ranks":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        from accelerate import PartialState

        # gloo named explicitly: on CPU accelerate otherwise believes it is alone (STACK.md).
        state = PartialState(backend="gloo")
        return cls(state.process_index, state.num_processes, state.wait_for_everyone)
