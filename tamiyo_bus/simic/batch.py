"""Stored decisions as what the learner evaluates: graph groups and their order.

The store holds each decision's step as it crossed the bus (cells encoded against its
segment's topology) and each topology once; here they become ``GraphTransitions`` in
the decisions' own order, one group per topology, and replay transitions. Topologies
are read from the store once and kept (a bounded number of them), so the replay and
the groups share one structure object per digest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.experience.steps import action_of, encoded_graph, graph_group, topology_of
from tamiyo_bus.learning.graph_batch import GraphGroup, GraphTransitions
from tamiyo_bus.learning.replay import GraphTransition
from tamiyo_bus.learning.replay.codec import EncodedStep, Topology
from tamiyo_bus.simic.store import ExperienceStore, StoredDecision

_TOPOLOGIES_KEPT = 64


class Topologies:
    """Topologies by digest, read from the store on first use."""

    def __init__(self, store: ExperienceStore, capacity: int = _TOPOLOGIES_KEPT) -> None:
        self.store = store
        self.capacity = capacity
        self._known: OrderedDict[str, Topology] = OrderedDict()

    def get(self, digest: str) -> Topology:
        known = self._known.get(digest)
        if known is not None:
            self._known.move_to_end(digest)
            return known
        arrays = self.store.topology_arrays(digest)
        if arrays is None:
            raise KeyError(f"topology {digest} is not stored")
        topology = topology_of(pb.GraphTopology(digest=digest, arrays=arrays))
        self._known[digest] = topology
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)
        return topology


def transitions_of(decisions: Sequence[StoredDecision], topologies: Topologies) -> GraphTransitions:
    """The decisions' graphs and choices, transition i being ``decisions[i]``."""
    members: dict[str, list[int]] = {}
    for i, decision in enumerate(decisions):
        members.setdefault(decision.topology, []).append(i)
    groups: list[GraphGroup] = []
    group_of = torch.empty(len(decisions), dtype=torch.int64)
    row_of = torch.empty(len(decisions), dtype=torch.int64)
    for k, (digest, indices) in enumerate(members.items()):
        steps = [decisions[i].step for i in indices]
        groups.append(graph_group(topologies.get(digest), steps))
        group_of[indices] = k
        row_of[indices] = torch.arange(len(indices))
    return GraphTransitions(tuple(groups), group_of, row_of)


def concatenated(first: GraphTransitions, second: GraphTransitions) -> GraphTransitions:
    """``first``'s transitions, then ``second``'s."""
    return GraphTransitions(
        first.groups + second.groups,
        torch.cat((first.group_of, second.group_of + len(first.groups))),
        torch.cat((first.row_of, second.row_of)),
    )


def replay_transition(
    decision: StoredDecision,
    topology: Topology,
    *,
    value: float,
    advantage: float,
    returns: float,
) -> GraphTransition:
    """A trained decision as the replay keeps it (its cells stored as they came)."""
    step = decision.step
    return GraphTransition(
        graph=EncodedStep(topology, encoded_graph(topology, step)),
        action=action_of(step.choice),
        log_prob=step.behaviour_log_prob,
        value=value,
        reward=decision.reward,
        policy_version=step.policy_version,
        step=step.decision_step,
        terminated=decision.next_step is None,
        advantage=advantage,
        returns=returns,
        risk_category=step.risk_category,
    )
