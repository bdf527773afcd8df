"""The learner's intake on a real server: a real Tamiyo's trajectories and its field
reports, published on the bus, are stored once and joined; hostile trajectories are
dead-lettered with their reason and counted, and nothing else is lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.connection import open_redis
from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.experience.publisher import TrajectoryPublisher
from tamiyo_bus.experience.steps import graph_group, progress_of, topology_of
from tamiyo_bus.learning.reward import RewardSettings, RewardTerms
from tamiyo_bus.simic.intake import BAD_CELLS, BAD_CHOICE, BAD_TOPOLOGY, ExperienceIntake
from tamiyo_bus.simic.learner import SimicLearner
from tamiyo_bus.simic.reward import decision_reward
from tamiyo_bus.simic.store import ExperienceStore
from tests.experience.test_recorder import SYNCHRONOUS
from tests.policy.helpers import make_stack
from tests.security.helpers import dead_letters
from weatherlight.role_keys import RoleKeys

from .helpers import initial_policy, learner_settings, simulated

KEYS = RoleKeys.generate()


def _bus(settings: OonaSettings, role: str, source: str | None = None) -> Bus:
    return Bus(open_redis(settings.redis_url, settings), settings, KEYS.signer(role),
               source=source or role)  # fmt: skip


def _intake(settings: OonaSettings, store: ExperienceStore) -> ExperienceIntake:
    return ExperienceIntake(
        _bus(settings, "simic"), KEYS.keyring, store, group="simic-learner",
        consumer="learner-1", held_out_fraction=0.1, max_age_ms=60_000.0,
    )  # fmt: skip


async def _publish(bus: Bus, message_type: int, message: object, stream: str) -> None:
    await bus.publish(message_type, message.SerializeToString(), stream=stream)  # type: ignore[attr-defined]


async def test_a_real_tamiyos_trajectories_and_field_reports_are_stored_once_and_joined(
    settings: OonaSettings, tmp_path: Path
) -> None:
    segments: list[pb.Trajectory] = []
    torch.manual_seed(0)
    stack = make_stack(settings=SYNCHRONOUS, experience=segments.append, seed=11)
    commands = [stack.tamiyo.evaluate_step(stack.packet(step)) for step in range(10, 90, 10)]
    stack.tamiyo.end_run(stack.packet(90))
    stack.tamiyo.close()
    acted = [c for c in commands if c is not None and c.command_type != pb.COMMAND_TYPE_NO_OP]
    assert acted and len(acted) < len(commands)  # both kinds of decision
    tamiyo = _bus(settings, "tamiyo")
    publisher = TrajectoryPublisher(tamiyo)
    for segment in [*segments, *segments]:  # every segment twice: a republish
        publisher.submit(segment)
    assert await publisher.flush(timeout_s=10.0)
    for command in [*acted, acted[0]]:
        report = pb.FieldReport(report_id=f"{command.command_id}/report",
                                command_id=command.command_id,
                                training_run_id=command.training_run_id,
                                metrics={"rollbacks": 1.0})  # fmt: skip
        await _publish(tamiyo, pb.MESSAGE_TYPE_FIELD_REPORT, report, Stream.FIELD_REPORTS)
    store = ExperienceStore(tmp_path / "experience.sqlite3")
    intake = _intake(settings, store)

    await intake.drain()
    learner = SimicLearner(learner_settings(tmp_path), store, initial_policy())
    learner.join(now_s=time.time())

    counts = store.counts()
    assert counts["decisions_stored"] == len(commands) == counts["decisions_duplicate"]
    assert counts["reports_stored"] == len(acted) and counts["reports_duplicate"] == 1
    assert counts["joined"] == len(commands)  # every decision has its successor and report
    complete = store.complete_decisions(100)
    assert [d.step.command_id for d in complete] == [c.command_id for c in commands]
    progress = [progress_of(d.step.progress) for d in complete]
    progress.append(progress_of(segments[-1].final_progress))
    acted_ids = {c.command_id for c in acted}
    for i, decision in enumerate(complete):  # each acted one's report: a rollback
        terms = RewardTerms(rollbacks=1) if decision.step.command_id in acted_ids else None
        expected = decision_reward(progress[i], progress[i + 1], terms, RewardSettings())
        assert decision.reward == pytest.approx(expected, rel=1e-5)
    store.close()
    for bus in (tamiyo, intake.consumer.bus):
        await bus.close()


def _copy(segment: pb.Trajectory) -> pb.Trajectory:
    copy = pb.Trajectory()
    copy.CopyFrom(segment)
    return copy


async def test_hostile_trajectories_are_dead_lettered_with_their_reason_and_counted(
    settings: OonaSettings, tmp_path: Path
) -> None:
    experience = simulated(initial_policy(), runs=1)
    good, other = [s for s in experience.segments if s.steps][:2]
    unreadable = _copy(other)
    unreadable.topology.arrays = b"not a safetensors file"
    misfit = _copy(other)
    misfit.steps[0].features = misfit.steps[0].features[:-2]
    outside = _copy(other)
    outside.steps[0].choice.action = 99
    masked = _copy(other)
    masks = graph_group(topology_of(other.topology), other.steps[:1]).masks.action[0]
    masked.steps[0].choice.action = int((~masks).nonzero()[0])
    tamiyo = _bus(settings, "tamiyo")
    for segment in (good, unreadable, misfit, outside, masked):
        await _publish(tamiyo, pb.MESSAGE_TYPE_TRAJECTORY, segment, Stream.TRAJECTORIES)
    forger = _bus(settings, "tolaria", source="tamiyo")  # a key of another role
    await _publish(forger, pb.MESSAGE_TYPE_TRAJECTORY, other, Stream.TRAJECTORIES)
    store = ExperienceStore(tmp_path / "experience.sqlite3")
    intake = _intake(settings, store)

    await intake.drain()

    reasons = [r[b"reason"].decode() for r in await dead_letters(tamiyo, Stream.TRAJECTORIES)]
    expected = [BAD_TOPOLOGY, BAD_CELLS, BAD_CHOICE, BAD_CHOICE, "unauthorised_signer"]
    assert sorted(reasons) == sorted(expected)
    metrics = intake.consumer.metrics
    for reason in set(expected):
        assert metrics.count("rejected", stream=Stream.TRAJECTORIES, reason=reason) == (
            expected.count(reason)
        )
    assert store.counts()["decisions_stored"] == len(good.steps)  # the good one, whole
    store.close()
    for bus in (tamiyo, forger, intake.consumer.bus):
        await bus.close()
