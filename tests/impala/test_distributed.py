"""Two learner processes (torch.multiprocessing, env:// on gloo, as torchrun starts
them) each learning from half of a batch make the same update as one process learning
from all of it: DDP averages the gradients, each rank's loss is the mean over its half."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.multiprocessing.spawn import spawn

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.impala.distributed import RankInfo, join_process_group, leave_process_group
from tamiyo_bus.impala.learner import ImpalaLearner

from .helpers import actor_segments, impala_settings, initial_policy

WORLD = 2
SEGMENTS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, port: int, payloads: list[bytes], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    info = RankInfo(rank, WORLD, rank)
    join_process_group(info)
    try:
        segments = [pb.Trajectory.FromString(p) for p in payloads]
        share = segments[rank::WORLD]
        learner = ImpalaLearner(impala_settings(Path(out)), initial_policy(), rank=info)
        assert learner.update(share).transitions > 0
        save_file(learner.policy.state_dict(), f"{out}/rank{rank}.safetensors")
    finally:
        leave_process_group()


def _same_length(segments: list[pb.Trajectory]) -> list[pb.Trajectory]:
    """Segments of equal trained length, so both halves weigh the same in the mean."""
    full = [s for s in segments if len(s.steps) == 5 and not s.steps[-1].done]
    assert len(full) >= SEGMENTS
    return full[:SEGMENTS]


def test_two_ranks_on_halves_make_the_update_of_one_on_the_whole(tmp_path: Path) -> None:
    segments = _same_length(actor_segments(initial_policy(), runs=8))
    payloads = [s.SerializeToString() for s in segments]
    arguments = (_free_port(), payloads, str(tmp_path))
    spawn(_rank, args=arguments, nprocs=WORLD, join=True)  # type: ignore[no-untyped-call]

    alone = ImpalaLearner(impala_settings(tmp_path), initial_policy())
    alone.update(segments)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(WORLD)]
    start = initial_policy().state_dict()
    moved = 0
    for name, weights in alone.policy.state_dict().items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][name], weights, rtol=1e-4, atol=1e-5)
        moved += int(not torch.equal(weights, start[name]))
    assert moved > 10  # the update did move the weights
