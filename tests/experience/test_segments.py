"""Segments and the wire form of a step: when a segment closes, what a run's end
carries, and a strict reading of what a writer put on the bus."""

from __future__ import annotations

import random
import zlib

import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.experience.segments import ExperienceSettings, Segmenter
from tamiyo_bus.experience.steps import (
    MAX_TOPOLOGY_BYTES,
    StepOutcome,
    action_of,
    choice_message,
    encoded_graph,
    progress_message,
    topology_message,
    topology_of,
    trajectory_step,
)
from tamiyo_bus.learning.replay.codec import Topology
from tamiyo_bus.learning.reward import Progress
from tamiyo_bus.policy.actions import PolicyAction
from tamiyo_bus.policy.features import RunningNormalizer
from tamiyo_bus.policy.graph import GraphBuilder, PolicyGraph
from tests import states as synthetic

PROGRESS = Progress(loss=0.5, accuracy=0.9, parameter_ratio=0.01)


def graph(size: synthetic.StateSize) -> PolicyGraph:
    host = synthetic.topology(size)
    metadata = {m.blueprint_id: m for m in synthetic.catalogue(size)}
    builder = GraphBuilder(host, list(metadata), RunningNormalizer(update=False))
    return builder.build(synthetic.packet(size, host, random.Random(0)), metadata)


GRAPH = graph(synthetic.REFERENCE_SIZE)
TOPOLOGY = Topology(GRAPH.structure)
OTHER = Topology(graph(synthetic.StateSize(8, 6, 4, 6, 6)).structure)


def step(decision_step: int) -> pb.TrajectoryStep:
    return pb.TrajectoryStep(command_id=f"c{decision_step}", decision_step=decision_step)


def test_a_segment_closes_when_full_and_names_its_first_decision() -> None:
    segments = Segmenter(ExperienceSettings(segment_max_steps=2), "tamiyo")
    assert segments.add("run", TOPOLOGY, "arch", step(10), now_s=0.0) == []
    (closed,) = segments.add("run", TOPOLOGY, "arch", step(20), now_s=0.0)
    assert closed.trajectory_id == "run/10"
    assert [s.decision_step for s in closed.steps] == [10, 20]
    assert topology_of(closed.topology).digest == TOPOLOGY.digest
    assert closed.architecture_id == "arch" and not closed.run_ended


def test_a_new_structure_or_architecture_closes_the_open_segment() -> None:
    segments = Segmenter(ExperienceSettings(), "tamiyo")
    segments.add("run", TOPOLOGY, "arch", step(10), now_s=0.0)
    (by_structure,) = segments.add("run", OTHER, "arch", step(20), now_s=0.0)
    (by_architecture,) = segments.add("run", OTHER, "arch-2", step(30), now_s=0.0)
    assert [s.decision_step for s in by_structure.steps] == [10]
    assert [s.decision_step for s in by_architecture.steps] == [20]
    assert segments.open_steps == 1


def test_runs_segment_apart_and_an_old_segment_closes_by_age() -> None:
    segments = Segmenter(ExperienceSettings(segment_max_age_s=5.0), "tamiyo")
    segments.add("a", TOPOLOGY, "arch", step(10), now_s=0.0)
    assert segments.add("b", TOPOLOGY, "arch", step(10), now_s=1.0) == []
    (old,) = segments.expire(now_s=5.5)
    assert old.training_run_id == "a"
    assert segments.open_steps == 1


def test_a_run_end_closes_its_segment_with_the_final_progress() -> None:
    segments = Segmenter(ExperienceSettings(), "tamiyo")
    segments.add("run", TOPOLOGY, "arch", step(10), now_s=0.0)
    ended = segments.end_run("run", PROGRESS)
    assert ended.run_ended and len(ended.steps) == 1
    assert ended.final_progress == progress_message(PROGRESS)
    empty = segments.end_run("run", PROGRESS)
    assert empty.run_ended and not empty.steps and empty.trajectory_id == "run/end"


def test_a_step_round_trips_its_choice_and_refuses_cells_of_another_topology() -> None:
    action = PolicyAction(3, seed=2, blueprint=1, blend=0, alpha_log_steps=2.5, lr_log_scale=-0.125)
    assert action_of(choice_message(action)) == action  # float32 draws: exact
    outcome = StepOutcome("c1", applied_step=12, acted=True, risk_category=1)
    written = trajectory_step(
        TOPOLOGY,
        GRAPH,
        action,
        log_prob=-1.5,
        value=0.25,
        policy_version=3,
        decision_step=11,
        progress=PROGRESS,
        outcome=outcome,
    )
    encoded_graph(TOPOLOGY, written)  # fits its own topology
    with pytest.raises(ValueError, match="the topology needs"):
        encoded_graph(OTHER, written)
    short = pb.TrajectoryStep()
    short.CopyFrom(written)
    short.features = written.features[:-2]
    with pytest.raises(ValueError, match="features"):
        encoded_graph(TOPOLOGY, short)
    truncated = pb.TrajectoryStep()
    truncated.CopyFrom(written)
    truncated.mask_bits = written.mask_bits[:-1]
    with pytest.raises(ValueError, match="mask_bits"):
        encoded_graph(TOPOLOGY, truncated)
    with pytest.raises(ValueError, match="outside the action space"):
        action_of(pb.PolicyChoice(action=10_000))


def test_a_topology_that_is_not_one_is_refused() -> None:
    message = topology_message(TOPOLOGY)
    with pytest.raises(ValueError, match="digest"):
        topology_of(pb.GraphTopology(digest="0" * 64, arrays=message.arrays))
    with pytest.raises(ValueError, match="unreadable"):
        topology_of(pb.GraphTopology(digest=message.digest, arrays=b"\x00garbage"))
    bomb = zlib.compress(bytes(MAX_TOPOLOGY_BYTES + 1))  # 16 KB that would inflate to 16 MB
    with pytest.raises(ValueError, match="exceed"):
        topology_of(pb.GraphTopology(digest=message.digest, arrays=bomb))
