"""Many policy graphs as one: stacked groups per structure, and their disjoint union.

Graphs built from one run's host with the same seed placement share a
:class:`GraphStructure`, so their per-step tensors stack along a leading axis (a
:class:`GraphGroup`). Any set of groups then becomes one PyG-style disjoint union
(node indices offset per type, graph after graph) that the reference policy embeds in a
single forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tamiyo_bus.learning.hierarchical import ActionBatch
from tamiyo_bus.policy.actions import ActionMasks, PolicyAction
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.schema import NODE_TYPES, RELATIONS
from tamiyo_bus.policy.structure import TYPE_INDEX, GraphStructure

EdgeType = tuple[str, str, str]
_RELATION_EDGES = "learning.relation_edges"  # key of this module's cache in structure.derived


@dataclass(frozen=True, slots=True)
class GraphGroup:
    """G graphs of one structure and the choice made on each, stacked."""

    structure: GraphStructure
    x: dict[str, Tensor]  # per node type: [G, nodes of the type, its feature width]
    edge_attr: Tensor  # [G, E, EDGE_DIM] in structure order
    masks: ActionMasks  # action [G, A], seed [G, S, seed actions], blueprint [G, S, B]
    actions: ActionBatch

    @classmethod
    def stack(cls, graphs: Sequence[PolicyGraph], actions: Sequence[PolicyAction]) -> GraphGroup:
        structure = graphs[0].structure
        if any(g.structure is not structure for g in graphs):
            raise ValueError("a GraphGroup holds graphs of one structure only")
        typed = [g.x_dict() for g in graphs]
        return cls(
            structure,
            {t: torch.stack([x[t] for x in typed]) for t in NODE_TYPES},
            torch.stack([g.edge_attr for g in graphs]),
            ActionMasks(
                torch.stack([g.masks.action for g in graphs]),
                torch.stack([g.masks.seed for g in graphs]),
                torch.stack([g.masks.blueprint for g in graphs]),
            ),
            ActionBatch.of(actions),
        )

    def select(self, rows: Tensor) -> GraphGroup:
        m = self.masks
        return GraphGroup(
            self.structure,
            {t: v[rows] for t, v in self.x.items()},
            self.edge_attr[rows],
            ActionMasks(m.action[rows], m.seed[rows], m.blueprint[rows]),
            self.actions.select(rows),
        )

    def __len__(self) -> int:
        return len(self.actions)


@dataclass(frozen=True, slots=True)
class GraphTransitions:
    """A batch of transitions as groups; transition i is row ``row_of[i]`` of group
    ``group_of[i]`` (the order the rewards, values and advantages are in)."""

    groups: tuple[GraphGroup, ...]
    group_of: Tensor  # [T] int64
    row_of: Tensor  # [T] int64

    @classmethod
    def of(cls, graphs: Sequence[PolicyGraph], actions: Sequence[PolicyAction]) -> GraphTransitions:
        """Group a rollout by structure, keeping the rollout's order of transitions."""
        members: dict[int, list[int]] = {}
        for i, graph in enumerate(graphs):
            members.setdefault(id(graph.structure), []).append(i)
        group_of = torch.empty(len(graphs), dtype=torch.int64)
        row_of = torch.empty(len(graphs), dtype=torch.int64)
        groups = []
        for k, indices in enumerate(members.values()):
            groups.append(
                GraphGroup.stack([graphs[i] for i in indices], [actions[i] for i in indices])
            )
            group_of[indices] = k
            row_of[indices] = torch.arange(len(indices))
        return cls(tuple(groups), group_of, row_of)

    @classmethod
    def from_groups(cls, groups: Sequence[GraphGroup]) -> GraphTransitions:
        """Transitions numbered group after group (as replay returns them)."""
        sizes = torch.tensor([len(g) for g in groups], dtype=torch.int64)
        group_of = torch.repeat_interleave(torch.arange(len(groups)), sizes)
        starts = torch.cumsum(sizes, 0) - sizes
        return cls(tuple(groups), group_of, torch.arange(len(group_of)) - starts[group_of])

    def __len__(self) -> int:
        return int(self.group_of.shape[0])


@dataclass(frozen=True, slots=True)
class UnionInputs:
    """The typed inputs of ``ReferencePolicy.embed_typed`` for a disjoint union."""

    x: dict[str, Tensor]
    edge_index: dict[EdgeType, Tensor]
    edge_attr: dict[EdgeType, Tensor]


def _relation_edges(structure: GraphStructure) -> tuple[tuple[Tensor, Tensor, Tensor], ...]:
    """(source local, destination local, positions in structure order) per relation,
    converted once per structure."""
    cached = structure.derived.get(_RELATION_EDGES)
    if cached is None:
        cached = tuple(
            (
                torch.from_numpy(structure.src_local[pos]),
                torch.from_numpy(structure.dst_local[pos]),
                torch.from_numpy(pos),
            )
            for pos in structure.relation_positions
        )
        structure.derived[_RELATION_EDGES] = cached
    return cached  # type: ignore[return-value]


def disjoint_union(groups: Sequence[GraphGroup], device: torch.device) -> UnionInputs:
    """Every graph of every group as one graph: per node type, group after group and
    graph after graph; edge indices offset accordingly."""
    base = dict.fromkeys(NODE_TYPES, 0)
    x: dict[str, list[Tensor]] = {t: [] for t in NODE_TYPES}
    index: dict[EdgeType, list[Tensor]] = {r.key: [] for r in RELATIONS}
    attr: dict[EdgeType, list[Tensor]] = {r.key: [] for r in RELATIONS}
    for group in groups:
        n, counts = len(group), group.structure.counts
        graph = torch.arange(n)[:, None]
        for t in NODE_TYPES:
            x[t].append(group.x[t].reshape(n * counts[TYPE_INDEX[t]], -1))
        for relation, (src, dst, pos) in zip(
            RELATIONS, _relation_edges(group.structure), strict=True
        ):
            n_src, n_dst = counts[TYPE_INDEX[relation.src]], counts[TYPE_INDEX[relation.dst]]
            sources = (base[relation.src] + graph * n_src + src).reshape(-1)
            destinations = (base[relation.dst] + graph * n_dst + dst).reshape(-1)
            index[relation.key].append(torch.stack((sources, destinations)))
            attr[relation.key].append(
                group.edge_attr[:, pos].reshape(-1, group.edge_attr.shape[-1])
            )
        for t in NODE_TYPES:
            base[t] += n * counts[TYPE_INDEX[t]]
    return UnionInputs(
        {t: torch.cat(v).to(device) for t, v in x.items()},
        {k: torch.cat(v, dim=1).to(device) for k, v in index.items()},
        {k: torch.cat(v).to(device) for k, v in attr.items()},
    )
