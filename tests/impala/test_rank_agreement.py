"""Two ranks (torch.multiprocessing, env:// on gloo, as torchrun starts them) never
block each other: a guard refusal on one rank is a refusal on both (both keep their
batch, no weight moves), a non-finite loss on one rank fails the step on both before
any backward (both breakers count it), and a rank with no segment takes part in the
step with a zero gradient: both ranks make the step one process makes on the other
rank's segments alone. The ranks are joined with a deadline: a hang fails the test."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.multiprocessing.spawn import spawn

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import BreakerName
from oona.breaker import BreakerSettings, CircuitBreaker
from tamiyo_bus.impala.distributed import RankInfo, join_process_group, leave_process_group
from tamiyo_bus.impala.learner import ImpalaLearner
from tamiyo_bus.learning.guard import LearningGuard, LearningGuardSettings

from .helpers import actor_segments, impala_settings, initial_policy
from .test_distributed import _free_port

WORLD = 2
DEADLINE_S = 120.0


def _unchanged(learner: ImpalaLearner, start: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, start[k]) for k, v in learner.policy.state_dict().items())


def _rank(rank: int, port: int, payloads: list[bytes], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    info = RankInfo(rank, WORLD, rank)
    join_process_group(info)
    try:
        segments = [pb.Trajectory.FromString(p) for p in payloads]
        share = segments[: len(segments) // 2] if rank == 0 else segments[len(segments) // 2 :]
        paused = {"on": False}
        breaker = CircuitBreaker(BreakerName.LEARNING, BreakerSettings(failure_threshold=5))
        guard = LearningGuard(breaker, lambda: paused["on"], LearningGuardSettings(0.5))
        settings = impala_settings(Path(out), updates_per_publish=1_000)
        learner = ImpalaLearner(settings, initial_policy(), rank=info, guard=guard)
        start = {k: v.clone() for k, v in learner.policy.state_dict().items()}
        report: dict[str, object] = {}

        paused["on"] = rank == 1  # conservative mode on rank 1 only
        refused = learner.update(share)
        paused["on"] = False
        report["refusal"] = [refused.outcome, refused.refused, _unchanged(learner, start)]

        poisoned = [pb.Trajectory(), *share[1:]]
        poisoned[0].CopyFrom(share[0])
        poisoned[0].steps[0].reward = math.nan
        failed = learner.update(poisoned if rank == 1 else share)
        report["non_finite"] = [failed.outcome, _unchanged(learner, start),
                                guard.outcomes[failed.outcome]]  # fmt: skip

        starved = learner.update(share if rank == 0 else [])
        report["starved"] = [starved.outcome, starved.transitions, learner.progress.updates]
        save_file(learner.policy.state_dict(), f"{out}/rank{rank}.safetensors")
        Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        leave_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[pb.Trajectory]]:
    out = tmp_path_factory.mktemp("ranks")
    segments = [s for s in actor_segments(initial_policy(), runs=4) if len(s.steps) > 1][:8]
    payloads = [s.SerializeToString() for s in segments]
    context = spawn(_rank, args=(_free_port(), payloads, str(out)), nprocs=WORLD, join=False)  # type: ignore[no-untyped-call]
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish within {DEADLINE_S} s: one is blocked")
    return out, segments


def _report(out: Path, rank: int) -> dict[str, list[object]]:
    report: dict[str, list[object]] = json.loads((out / f"rank{rank}.json").read_text())
    return report


def test_a_refusal_on_one_rank_is_a_refusal_on_both(
    ranks: tuple[Path, list[pb.Trajectory]],
) -> None:
    out, _ = ranks
    for rank in range(WORLD):  # paused on rank 1: both refuse, keep their batch, move nothing
        assert _report(out, rank)["refusal"] == ["paused", True, True]


def test_a_non_finite_loss_on_one_rank_fails_the_step_on_both(
    ranks: tuple[Path, list[pb.Trajectory]],
) -> None:
    out, _ = ranks
    for rank in range(WORLD):  # each breaker counted the failure once, no weight moved
        assert _report(out, rank)["non_finite"] == ["non_finite", True, 1]


def test_a_starved_rank_steps_with_the_others_on_a_zero_gradient(
    ranks: tuple[Path, list[pb.Trajectory]], tmp_path: Path
) -> None:
    out, segments = ranks
    alone = ImpalaLearner(impala_settings(tmp_path, updates_per_publish=1_000), initial_policy())
    expected = alone.update(segments[: len(segments) // 2])
    weights = [load_file(out / f"rank{r}.safetensors") for r in range(WORLD)]
    for rank in range(WORLD):
        assert _report(out, rank)["starved"] == ["applied", expected.transitions, 1]
    for name, value in alone.policy.state_dict().items():
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0)
        torch.testing.assert_close(weights[0][name], value, rtol=1e-4, atol=1e-5)
