"""A simulated actor publishes what its runs decided as rewarded segments: every
decision with its reward and the episode's end, in order, by the policy version that
decided; a new policy in the holder decides the next episode; nothing goes out while
publishing is not allowed."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.experience.segments import ExperienceSettings
from tamiyo_bus.experience.steps import graph_group, topology_of
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.sim.actor import ActorSettings, SimActor
from tamiyo_bus.sim.settings import SimSettings
from tests.policy.helpers import SMALL, holder_for

SHORT = ActorSettings(
    runs=2,
    seed=3,
    sim=SimSettings(epochs=2, steps_per_epoch=20, decision_every_steps=4),
    experience=ExperienceSettings(segment_max_steps=4),
)
DECISIONS_PER_RUN = 10


def actor(segments: list[pb.Trajectory], allowed: bool = True) -> SimActor:
    torch.manual_seed(0)
    holder = holder_for(ServingPolicy(SMALL))
    return SimActor(
        SHORT, holder, segments.append, actor_id="actor-1", publishing_allowed=lambda: allowed
    )


def test_every_decision_goes_out_with_its_reward_in_order_and_the_run_ends() -> None:
    segments: list[pb.Trajectory] = []
    played = actor(segments).play()
    assert all(s.rewarded and s.actor_id == "actor-1" for s in segments)
    for episode in played:
        mine = [s for s in segments if s.training_run_id == episode.training_run_id]
        steps = [step for s in mine for step in s.steps]
        assert len(steps) == DECISIONS_PER_RUN
        assert [s.reward for s in steps] == pytest.approx([r.reward for r in episode.records])
        assert [s.done for s in steps] == [False] * (DECISIONS_PER_RUN - 1) + [True]
        assert sorted(s.decision_step for s in steps) == [s.decision_step for s in steps]
        assert all(len(s.steps) <= 4 for s in mine)  # full, or cut where the graph changed
        assert mine[-1].run_ended and not any(s.run_ended for s in mine[:-1])
        assert len({step.command_id for step in steps}) == DECISIONS_PER_RUN


def test_a_segment_decodes_to_the_graphs_and_choices_that_were_played() -> None:
    segments: list[pb.Trajectory] = []
    played = actor(segments).play()
    first = segments[0]
    group = graph_group(topology_of(first.topology), first.steps)
    episode = next(e for e in played if e.training_run_id == first.training_run_id)
    records = episode.records[: len(first.steps)]
    assert group.actions.action.tolist() == [r.action.action for r in records]
    expected = torch.stack([r.graph.x_dict()["layer"] for r in records])
    torch.testing.assert_close(group.x["layer"], expected, atol=2e-2, rtol=1e-2)


def test_the_next_episode_is_decided_by_the_policy_the_holder_runs_now() -> None:
    segments: list[pb.Trajectory] = []
    simulated = actor(segments)
    simulated.play()
    newer = dataclasses.replace(simulated.holder.current(), version=2)
    with simulated.holder.lock:
        simulated.holder.install(newer)
    segments.clear()
    simulated.play()
    assert {s.policy_version for s in segments if s.steps} == {2}
    assert simulated.stats.policy_version == 2 and simulated.stats.episodes == 2


def test_nothing_goes_out_while_publishing_is_not_allowed() -> None:
    segments: list[pb.Trajectory] = []
    withheld = actor(segments, allowed=False)
    withheld.play()
    assert segments == [] and withheld.stats.withheld_episodes == 1
