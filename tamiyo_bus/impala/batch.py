"""Rewarded segments as one batch for the V-trace loss: graphs grouped, steps padded.

Every segment's graphs go into one ``GraphTransitions`` (segments of one topology
share a group), so the network evaluates the whole batch in one pass whatever the
segments' lengths and topologies. The steps are then laid out time-major ``[T, B]``,
one column per segment, left-padded to the longest (``loss`` says why padding on that
side leaves the targets exact).

A segment carries no state after its last step. One cut before its episode ended
bootstraps from its own last step, the learner's value of it, and that step is not
learnt from (an unroll of 20 steps trains on 19). A simulated actor's cut segment also
carries the behaviour critic's value of the next state (``bootstrap_value``); with
``behaviour_bootstrap`` it trains on all its steps, bootstrapping from that value (not
the default: ``ImpalaLossSettings`` says why). A segment whose last step ended the
episode trains on all its steps.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.experience.steps import graph_group, topology_of
from tamiyo_bus.impala.loss import VTraceInputs
from tamiyo_bus.learning.graph_batch import GraphGroup, GraphTransitions
from tamiyo_bus.learning.graph_evaluation import GraphPolicyEvaluator
from tamiyo_bus.learning.replay.codec import Topology
from tamiyo_bus.policy.reference import ReferencePolicy

_TOPOLOGIES_KEPT = 64


class TopologyCache:
    """Decoded topologies by digest (a bounded number), so a structure is decoded once
    and every group of it shares one structure object."""

    def __init__(self, capacity: int = _TOPOLOGIES_KEPT) -> None:
        self.capacity = capacity
        self._known: OrderedDict[str, Topology] = OrderedDict()

    def get(self, message: pb.GraphTopology) -> Topology:
        known = self._known.get(message.digest)
        if known is None:
            known = self._known[message.digest] = topology_of(message)
            while len(self._known) > self.capacity:
                self._known.popitem(last=False)
        self._known.move_to_end(message.digest)
        return known


def trained_steps(segment: pb.Trajectory, *, behaviour_bootstrap: bool) -> int:
    """How many of the segment's steps are learnt from (the rest bootstraps)."""
    steps = len(segment.steps)
    if steps == 0 or segment.steps[-1].done:
        return steps
    if behaviour_bootstrap and segment.HasField("bootstrap_value"):
        return steps
    return steps - 1


@dataclass(frozen=True, slots=True)
class SegmentBatch:
    """What the loss needs of a batch, before any network saw it."""

    inputs: GraphTransitions  # every step of every segment, segment after segment
    trained: Tensor  # [N] flat index (into inputs) of each trained step
    time_index: Tensor  # [N] its row in [T, B]
    column: Tensor  # [N] its column (segment) in [T, B]
    bootstrap: Tensor  # [B] flat index of each segment's bootstrap state (-1: none)
    given_bootstrap: Tensor  # [B] the segment's bootstrap value where it has no such state
    behaviour_log_probs: Tensor  # [T, B], padding 0
    rewards: Tensor  # [T, B]
    terminated: Tensor  # [T, B]
    mask: Tensor  # [T, B]

    @property
    def transitions(self) -> int:
        return int(self.trained.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.mask.shape[0]), int(self.mask.shape[1]))

    def trained_inputs(self) -> GraphTransitions:
        """Only the trained steps, in the batch's flat order."""
        return GraphTransitions(
            self.inputs.groups,
            self.inputs.group_of[self.trained],
            self.inputs.row_of[self.trained],
        )

    def evaluate(self, policy: ReferencePolicy) -> VTraceInputs:
        """The policy's log-probs, entropies and values laid out ``[T, B]`` (with
        gradient, unless called under ``torch.no_grad``) and the detached bootstraps."""
        evaluation = GraphPolicyEvaluator(policy).evaluate(
            self.inputs, torch.arange(len(self.inputs))
        )
        device = evaluation.value.device

        def laid_out(flat: Tensor) -> Tensor:
            grid = torch.zeros(self.shape, dtype=flat.dtype, device=device)
            where = (self.time_index.to(device), self.column.to(device))
            return grid.index_put(where, flat[self.trained.to(device)])

        ends = self.bootstrap.to(device)
        bootstrap = torch.where(
            ends >= 0,
            evaluation.value.detach().float()[ends.clamp(min=0)],
            self.given_bootstrap.to(device),
        )
        return VTraceInputs(
            laid_out(evaluation.log_prob),
            laid_out(evaluation.entropy),
            laid_out(evaluation.value.float()),
            bootstrap.float(),
            self.behaviour_log_probs.to(device),
            self.rewards.to(device),
            self.terminated.to(device),
            self.mask.to(device),
        )


def segment_batch(
    segments: Sequence[pb.Trajectory], topologies: TopologyCache, *, behaviour_bootstrap: bool
) -> SegmentBatch:
    """The batch of ``segments`` that have a step to learn from (ValueError: none has);
    each segment was checked at intake (``simic.intake.check_segment``)."""

    def learnt_steps(segment: pb.Trajectory) -> int:
        return trained_steps(segment, behaviour_bootstrap=behaviour_bootstrap)

    learnt = [s for s in segments if learnt_steps(s) > 0]
    if not learnt:
        raise ValueError("no segment with a step to learn from")
    length = max(learnt_steps(s) for s in learnt)
    shape = (length, len(learnt))
    behaviour, rewards = torch.zeros(shape), torch.zeros(shape)
    terminated, mask = torch.zeros(shape), torch.zeros(shape)
    members: OrderedDict[str, list[int]] = OrderedDict()  # digest -> segment indices
    for b, segment in enumerate(learnt):
        members.setdefault(segment.topology.digest, []).append(b)
    groups: list[GraphGroup] = []
    start_of: dict[int, tuple[int, int]] = {}  # segment -> (group, first row)
    for k, indices in enumerate(members.values()):
        topology = topologies.get(learnt[indices[0]].topology)
        steps = [step for b in indices for step in learnt[b].steps]
        groups.append(graph_group(topology, steps))
        row = 0
        for b in indices:
            start_of[b] = (k, row)
            row += len(learnt[b].steps)
    group_of: list[int] = []
    row_of: list[int] = []
    trained: list[int] = []
    time_index: list[int] = []
    column: list[int] = []
    bootstrap: list[int] = []
    given_bootstrap = torch.zeros(len(learnt))
    for b, segment in enumerate(learnt):
        k, first_row = start_of[b]
        first_flat = len(group_of)
        n = learnt_steps(segment)
        for i, step in enumerate(segment.steps):
            group_of.append(k)
            row_of.append(first_row + i)
            if i < n:
                t = length - n + i
                trained.append(first_flat + i)
                time_index.append(t)
                column.append(b)
                behaviour[t, b] = step.behaviour_log_prob
                rewards[t, b] = step.reward
                terminated[t, b] = float(step.done)
                mask[t, b] = 1.0
        if n < len(segment.steps):
            bootstrap.append(first_flat + n)
        else:
            bootstrap.append(-1)
            given_bootstrap[b] = segment.bootstrap_value  # 0.0 where the episode ended

    def index(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.int64)

    return SegmentBatch(
        GraphTransitions(tuple(groups), index(group_of), index(row_of)),
        index(trained), index(time_index), index(column), index(bootstrap), given_bootstrap,
        behaviour, rewards, terminated, mask,
    )  # fmt: skip
