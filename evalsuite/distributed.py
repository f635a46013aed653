"""Which share of the items this process evaluates, on which device, and a barrier to meet the others.

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
        # A bare PartialState does not read ACCELERATE_USE_CPU (Accelerator does): without cpu=True it
        # reports DistributedType.NO under `accelerate launch --multi_gpu` on CPU and its barrier returns
        # at once. gloo is named for the same reason as in training (train/lora.py): without it
        # accelerate and the process group can disagree on the world size.
        state = PartialState(cpu=True, backend="gloo") if cpu else PartialState()
        if state.num_processes != world or state.distributed_type.name == "NO":
            raise RuntimeError(f"WORLD_SIZE={world} but accelerate set up {state.num_processes} process(es) "
                               f"({state.distributed_type}); launch with `accelerate launch --multi_gpu` "
                               f"(CPU: ACCELERATE_USE_CPU=1)")
        return cls(state.process_index, state.num_processes, state.wait_for_everyone, device)
