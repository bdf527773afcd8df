"""Several learner processes as one (torch.distributed, as ``torchrun`` starts them).

Each rank reads RANK, WORLD_SIZE and LOCAL_RANK from its environment, joins the
process group (``env://``: MASTER_ADDR and MASTER_PORT, also torchrun's), gloo on the
CPU and nccl with CUDA, and wraps its network in DistributedDataParallel, which
averages the gradients of every backward across the ranks: each rank learns from its
own share of the segments and all hold the same weights after every step. The only
other collectives are torch.distributed's own broadcast and all-reduce of a few
integers: the lead rank's gate verdict, and whether any rank is stopping.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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
        """The rank that runs the gate, publishes and checkpoints."""
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


def data_parallel(module: nn.Module, info: RankInfo) -> nn.Module:
    """``module`` with its gradients averaged across the ranks (itself for one rank).
    Some heads take no part in a batch (no seed to choose): their parameters have no
    gradient, which DDP must be told to expect. No ``device_ids``: the batch moves itself
    to the network's device, DDP need not move it."""
    if not info.distributed:
        return module
    return DistributedDataParallel(module, find_unused_parameters=True)


def from_lead(values: Sequence[int], info: RankInfo, device: torch.device) -> list[int]:
    """The lead rank's ``values`` on every rank (every rank calls it, in step)."""
    if not info.distributed:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=LEAD_RANK)
    return [int(v) for v in tensor.tolist()]


def any_rank(flag: bool, info: RankInfo, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank (every rank calls it, in step)."""
    if not info.distributed:
        return flag
    tensor = torch.tensor([int(flag)], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
