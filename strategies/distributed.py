"""Data-parallel training under an existing launcher (`torchrun`), or a single process.

`train.num_processes > 1` makes the daemon start the child through `torch.distributed.run`, which
sets RANK / WORLD_SIZE / LOCAL_RANK; every rank holds the same rows and the same seeded batch
order, takes its own share of each step's batches, and DistributedDataParallel averages the
gradients (gloo on CPU, NCCL on CUDA). Rank 0 alone reports progress, writes checkpoints and the
candidate, and evaluates; a stop request on any rank stops every rank at the same step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def device(self, choice: str) -> torch.device:
        if choice == "auto":
            choice = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(choice)
        if device.type == "cuda" and self.active and device.index is None:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module to run forward through: DDP when data-parallel (grads are averaged in backward)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def steps(self, batches: Sequence[T]) -> list[list[T]]:
        """Each step's batches, one per rank; the last step is filled from the start (as
        DistributedSampler pads), so every rank does the same number of steps."""
        if not batches:
            return []
        count = -(-len(batches) // self.world)
        padded = list(batches) + [batches[i % len(batches)] for i in range(count * self.world - len(batches))]
        return [padded[i * self.world:(i + 1) * self.world] for i in range(count)]

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag true on every rank when it is true on any (a non-finite loss, a stop request):
        one all-reduce for all of them."""
        if not self.active:
            return flags
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=_collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in value.tolist())

    def sum(self, *values: float) -> tuple[float, ...]:
        """Each value summed over the ranks (one all-reduce)."""
        if not self.active:
            return values
        import torch.distributed as dist

        total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return tuple(total.tolist())

    def in_sync(self, model: torch.nn.Module) -> bool:
        """True when every rank holds the same trainable weights (what DDP guarantees; checked once)."""
        if not self.active:
            return True
        import torch.distributed as dist

        with torch.no_grad():
            total = sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad)
            low = torch.tensor([float(total)], dtype=torch.float64, device=_collective_device())
            high = low.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        return bool((high - low).abs().item() <= 1e-9 * max(1.0, abs(float(high.item()))))

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def _collective_device() -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def join() -> Group:
    """The process group this process belongs to: joined when a launcher started several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Group()
    import torch.distributed as dist

    global _OWNED
    if not dist.is_initialized():  # Ray Train sets the group up before calling the worker's function
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        _OWNED = True
    return Group(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


_OWNED = False  # this process set up the group (join), so leave() tears it down


def leave(group: Group) -> None:
    global _OWNED
    if group.active and _OWNED:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _OWNED = False

