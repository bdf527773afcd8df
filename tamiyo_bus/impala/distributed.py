"""Several learner processes as one (torch.distributed, as ``torchrun`` starts them).

Each rank reads RANK, WORLD_SIZE and LOCAL_RANK from its environment and joins the
process group (``env://``: MASTER_ADDR and MASTER_PORT, also torchrun's), gloo on the
CPU and nccl with CUDA. Every collective here is one of torch.distributed's
(all-reduce, broadcast) over a small tensor, and every rank calls the same ones in the
same order: a rank that skipped one would leave the others blocked in it, which is why
every per-update decision goes through ``sum_across`` before any rank acts on it.

The gradients are synchronised by DistributedDataParallel during the backward. DDP
averages the ranks' gradients; the learner scales each rank's loss by its share of the
transitions times the number of ranks, so the average is the gradient one process
would take on the ranks' segments together, whatever the share of each.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

LEAD_RANK = 0


@dataclass(frozen=True, slots=True)
class RankInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def lead(self) -> bool:
        """The rank that runs the gate, publishes, checkpoints and reports."""
        return self.rank == LEAD_RANK

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RankInfo:
        env = os.environ if environ is None else environ
        info = cls(
            int(env.get("RANK", "0")),
            int(env.get("WORLD_SIZE", "1")),
            int(env.get("LOCAL_RANK", "0")),
        )
        if not 0 <= info.rank < info.world_size:
            raise ValueError(f"RANK {info.rank} outside WORLD_SIZE {info.world_size}")
        return info


def learner_device(info: RankInfo) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def join_process_group(info: RankInfo) -> None:
    """Join the ranks (nothing to join for one process)."""
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(
            backend, init_method="env://", rank=info.rank, world_size=info.world_size
        )


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def from_lead(values: Sequence[int], info: RankInfo, device: torch.device) -> list[int]:
    """The lead rank's ``values`` on every rank (every rank calls it, in step)."""
    if not info.distributed:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=LEAD_RANK)
    return [int(v) for v in tensor.tolist()]


def sum_across(values: Sequence[int], info: RankInfo, device: torch.device) -> list[int]:
    """Each of ``values`` summed over the ranks (every rank calls it, in step): flags
    become the number of ranks raising them, counts the ranks' total."""
    if not info.distributed:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [int(v) for v in tensor.tolist()]


def sum_floats_across(values: Sequence[float], info: RankInfo, device: torch.device) -> list[float]:
    """Each of ``values`` summed over the ranks, in float64 (every rank calls it, in step)."""
    if not info.distributed:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.tolist()]


def max_across(value: int, info: RankInfo, device: torch.device) -> int:
    """The highest ``value`` of any rank (every rank calls it, in step)."""
    if not info.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def data_parallel(module: nn.Module, info: RankInfo) -> nn.Module:
    """``module`` with its gradients synchronised across the ranks (itself for one
    rank). Some heads take no part in a batch (no seed to choose): their parameters get
    no gradient, which DDP must be told to expect. No ``device_ids``: the batch moves
    itself to the network's device."""
    if not info.distributed:
        return module
    return DistributedDataParallel(module, find_unused_parameters=True)


def align_with_lead(tensors: Iterable[torch.Tensor], info: RankInfo) -> None:
    """The lead rank's values in ``tensors``, in place, on every rank."""
    if not info.distributed:
        return
    for tensor in tensors:
        dist.broadcast(tensor, src=LEAD_RANK)
