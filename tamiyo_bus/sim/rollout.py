"""Run any decision policy for one episode of every simulated run.

Each decision goes the step path's way from packet to command: the graph builder
builds the PolicyGraph (and hands its raw features to the running normaliser), the
policy decides, ``decision.propose_command`` turns the choice into the command, and
the simulator's Kasmina applies it. What PPO needs comes back per decision:
the graph, the action, its log-probability and value, the interval reward and
whether the episode ended there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.decision import propose_command
from tamiyo_bus.kasmina.executor import ApplyResult
from tamiyo_bus.learning.reward import Progress
from tamiyo_bus.policy.actions import PolicyAction
from tamiyo_bus.policy.features import RunningNormalizer
from tamiyo_bus.policy.graph import GraphBuilder, PolicyGraph
from tamiyo_bus.policy.serving import DecisionPolicy, Inference
from tamiyo_bus.sim.env import VectorSim

BREAKER_NAME = "tamiyo.policy"  # the breaker a CIRCUIT_BREAKER action names


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One decision and what followed it until the next one."""

    graph: PolicyGraph
    action: PolicyAction
    log_prob: float
    value: float
    reward: float
    done: bool
    command: pb.AdaptationCommand
    result: ApplyResult
    progress: Progress  # where the run stood at the decision's packet


@dataclass(frozen=True, slots=True)
class Episode:
    """One run's episode: its decisions, their summed reward, its field reports and
    the packet of its final state."""

    training_run_id: str
    records: tuple[DecisionRecord, ...]
    episode_return: float
    reports: tuple[pb.FieldReport, ...]
    final_state: pb.SystemStatePacket


def graph_builder(sim: VectorSim, normalizer: RunningNormalizer | None = None) -> GraphBuilder:
    """A graph builder for the simulator's host and catalogue; without ``normalizer``,
    one whose statistics stay fixed (identity until loaded)."""
    return GraphBuilder(
        sim.topology,
        sim.host.candidate_blueprints(),
        normalizer or RunningNormalizer(update=False),
    )


def run_episode(
    sim: VectorSim,
    policies: Sequence[DecisionPolicy],
    builder: GraphBuilder,
    *,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> list[Episode]:
    """One episode of every run of ``sim``, run ``r`` decided by ``policies[r]`` (pass
    the same policy for every run unless it keeps per-run state, as the heuristic
    does)."""
    if len(policies) != sim.runs:
        raise ValueError(f"need one policy per run ({sim.runs}), got {len(policies)}")
    metadata = sim.blueprint_metadata
    packets = sim.reset()
    records: list[list[DecisionRecord]] = [[] for _ in range(sim.runs)]
    reports: list[list[pb.FieldReport]] = [[] for _ in range(sim.runs)]
    while True:
        decided: list[tuple[PolicyGraph, Inference, pb.AdaptationCommand, Progress]] = []
        for packet, policy in zip(packets, policies, strict=True):
            graph = builder.build(packet, metadata)
            builder.normalizer.observe(graph.raw)
            inference = policy.decide(graph, greedy=greedy, generator=generator)
            command = propose_command(inference, graph, BREAKER_NAME)
            command.training_run_id = packet.training_run_id
            command.global_step = packet.global_step
            decided.append((graph, inference, command, Progress.of_packet(packet)))
        step = sim.step([command for _, _, command, _ in decided])
        for run, (graph, inference, command, progress) in enumerate(decided):
            records[run].append(
                DecisionRecord(
                    graph,
                    inference.action,
                    inference.log_prob,
                    inference.value,
                    float(step.rewards[run]),
                    step.done,
                    command,
                    step.results[run],
                    progress,
                )
            )
            reports[run].extend(step.reports[run])
        if step.done:
            break
        packets = step.packets
    return [
        Episode(
            sim.run_ids[run],
            tuple(records[run]),
            sum(r.reward for r in records[run]),
            tuple(reports[run]),
            step.packets[run],
        )
        for run in range(sim.runs)
    ]
