"""DistributedDataParallel setup from the environment torchrun sets (RANK, WORLD_SIZE, ...).

Without those variables (a plain `python script.py`) everything is a single process: rank 0 of 1.
Backend: nccl for CUDA devices, gloo for the CPU.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Distributed", "init_distributed"]


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device) -> bool:
        """True on every rank if `flag` is true on any rank (one tiny all-reduce)."""
        if not self.enabled:
            return flag
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def close(self, together: bool = False) -> None:
        """Leave the process group; `together` first waits for every rank (a clean finish).

        A rank that destroys its gloo group while another still talks to it can abort. After an
        error the other ranks may never arrive, so only a clean finish waits.
        """
        if self.enabled and dist.is_initialized():
            if together:
                dist.barrier()
            dist.destroy_process_group()


def init_distributed(device_type: str) -> Distributed:
    """Join the process group torchrun describes, if any (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Distributed(rank, world_size, local_rank)
