"""The fast policy: ReferencePolicy's function, computed with few, grouped kernels.

At Tamiyo's graph sizes (tens to a few hundred nodes) the plain PyG model's cost is
per-kernel overhead and weight traffic: every relation of every layer runs its own
small sequence of kernels. Here each layer is a fixed handful of operations whatever
the number of relations, because sums over relations are folded into the weights:

* Typed encoders: one matmul over a block-diagonal input (a one-hot type column
  carries each encoder's bias).
* GraphSAGE: ``sum_r [W_r mean_r(x_src) + b_r + U_r x_dst]``. One ``embedding_bag``
  computes every per-relation mean (and copies each node's own row into a "root"
  slot); one matmul per destination type multiplies the stacked means by the stacked
  ``W_r`` and the pre-summed ``sum_r U_r``. Complete relations (every source to every
  destination) give every destination the same mean, so they are computed once, as
  one batched matrix-vector product, and enter as a per-type bias.
* GAT: one matmul per source type produces every relation's projected messages and,
  with the attention vectors folded into the weights, every attention logit; the
  per-(relation, destination) softmax is two segment reductions over edges sorted by
  slot; one weighted ``embedding_bag`` aggregates all heads of all relations.

All index tensors come from the graph structure and are cached on it while the
topology is unchanged. This class is for inference only; learning trains the
ReferencePolicy it was packed from.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tamiyo_bus.policy.actions import PolicyOutput
from tamiyo_bus.policy.features import (
    BLOCK_OFFSETS,
    ENCODER_INPUT_WIDTH,
    FEATURE_SPECS,
    TYPE_COLUMN_OFFSET,
)
from tamiyo_bus.policy.graph import EDGE_DIM, PolicyGraph
from tamiyo_bus.policy.reference import GAT_NEGATIVE_SLOPE, ReferencePolicy
from tamiyo_bus.policy.schema import BLUEPRINT, NODE_TYPES, RELATIONS, SEED, incoming, outgoing
from tamiyo_bus.policy.structure import GraphStructure

_T = len(NODE_TYPES)
_SRC_TYPE = np.array([NODE_TYPES.index(r.src) for r in RELATIONS])
_DST_TYPE = np.array([NODE_TYPES.index(r.dst) for r in RELATIONS])
_OUT_POS = np.array([outgoing(r.src).index(i) for i, r in enumerate(RELATIONS)])
_IN_POS = np.array([incoming(r.dst).index(i) for i, r in enumerate(RELATIONS)])
_N_OUT = np.array([len(outgoing(t)) for t in NODE_TYPES])
_N_IN = np.array([len(incoming(t)) for t in NODE_TYPES])
# GraphSAGE: relations aggregated per destination (partial) or once per type (complete).
_COMPLETE = tuple(i for i, r in enumerate(RELATIONS) if r.complete)
_PARTIAL_IN = tuple(tuple(r for r in incoming(t) if not RELATIONS[r].complete) for t in NODE_TYPES)
_N_PARTIAL = np.array([len(p) for p in _PARTIAL_IN])
_PARTIAL_POS = np.full(len(RELATIONS), -1)
for _rels in _PARTIAL_IN:
    for _k, _r in enumerate(_rels):
        _PARTIAL_POS[_r] = _k

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class _GatLayout:
    """Column layout of one GAT layer's per-type projection.

    A node of type t gets one row of width ``row_width[t]`` (a multiple of the head
    size C): its projected message for each outgoing relation (H*C each), its source
    attention logit for each outgoing relation (H each), its destination logit for
    each incoming relation (H each), zero padding, and the residual projection.
    """

    heads: int
    head_dim: int
    skip_dim: int  # width of the residual projection ending each row (0: none)
    row_width: tuple[int, ...]

    @classmethod
    def create(cls, heads: int, head_dim: int, skip_dim: int) -> _GatLayout:
        widths = []
        for t in range(_T):
            attention = heads * (_N_OUT[t] + _N_IN[t])
            attention += -attention % head_dim
            widths.append(int(_N_OUT[t] * heads * head_dim + attention + skip_dim))
        return cls(heads, head_dim, skip_dim, tuple(widths))

    def src_alpha_column(self, t: int) -> int:
        return int(_N_OUT[t]) * self.heads * self.head_dim

    def dst_alpha_column(self, t: int) -> int:
        return self.src_alpha_column(t) + int(_N_OUT[t]) * self.heads


@dataclass(frozen=True, slots=True)
class _GatIndex:
    size: int  # floats in the layer's projection buffer
    bases: tuple[int, ...]  # start of each type's rows in the buffer
    src_alpha: Tensor  # [E, H] flat buffer positions of each edge's source logit
    dst_alpha: Tensor  # [E, H] ... and of its destination logit
    message_rows: Tensor  # [E*H] rows of buffer.view(-1, C), in (dst, head, edge) order
    bag_offsets: Tensor  # [N*H + 1]
    order: Tensor  # [E*H] position of each (edge, head) weight in message_rows order
    skip_rows: Tensor  # [N * skip_dim / C] rows holding each node's residual projection


@dataclass(frozen=True, slots=True)
class _Index:
    sage_input: Tensor  # partial-relation bags and root slots, in SAGE slot order
    sage_offsets: Tensor
    sage_weights: Tensor
    sage_slot_offsets: tuple[int, ...]  # first SAGE slot of each type
    nodes: Tensor  # arange(N)
    type_offsets: Tensor  # [T + 1] node-row offsets of each type
    node_type: Tensor  # [N]
    slot: Tensor  # [E] softmax group (destination slot) of each edge
    edges: Tensor  # arange(E)
    slot_offsets: Tensor  # [slots + 1]
    edge_columns: Tensor  # [E, layers * H] positions in (edge_attr @ edge weights)
    gat: tuple[_GatIndex, ...]


class FastPolicy:
    """Inference-only packing of a :class:`ReferencePolicy`'s current parameters."""

    def __init__(self, policy: ReferencePolicy, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.config = config = policy.config
        self.layouts = tuple(
            _GatLayout.create(
                config.gat_heads, config.gat_head_dim, config.gat_dim if layer == 0 else 0
            )
            for layer in range(config.gat_layers)
        )
        self._key = f"fast:{config}:{self.device}"
        with torch.no_grad():
            self._pack(policy)
            self.heads = copy.deepcopy(policy.heads).to(self.device).eval()
        for parameter in self.heads.parameters():
            parameter.requires_grad_(False)

    def _put(self, tensor: Tensor) -> Tensor:
        return tensor.detach().to(self.device, torch.float32).contiguous()

    def _pack(self, policy: ReferencePolicy) -> None:
        """Weights in (out, in) layout, stacked per node type as the forward uses them."""
        hidden = policy.config.hidden_dim
        encoder = torch.zeros(hidden, ENCODER_INPUT_WIDTH)
        for i, t in enumerate(NODE_TYPES):
            start = BLOCK_OFFSETS[t]
            linear = cast(nn.Linear, policy.encoders[t])
            encoder[:, start : start + FEATURE_SPECS[t].width] = linear.weight
            encoder[:, TYPE_COLUMN_OFFSET + i] = linear.bias
        self.encoder = self._put(encoder)

        self.sage_stacked: list[list[Tensor]] = []
        self.sage_complete: list[Tensor] = []  # [C, in, out] for the batched matvec
        self.sage_bias: list[Tensor] = []  # [T, out]
        for conv in policy.sage:
            stacked = []
            for t, partial in zip(NODE_TYPES, _PARTIAL_IN, strict=True):
                root = sum(_conv(conv, r).lin_r.weight for r in incoming(t))
                blocks = [_conv(conv, r).lin_l.weight for r in partial]
                stacked.append(self._put(torch.cat([*blocks, root], dim=1)))
            self.sage_stacked.append(stacked)
            self.sage_complete.append(
                self._put(torch.stack([_conv(conv, r).lin_l.weight.T for r in _COMPLETE]))
            )
            self.sage_bias.append(
                self._put(
                    torch.stack(
                        [sum(_conv(conv, r).lin_l.bias for r in incoming(t)) for t in NODE_TYPES]
                    )
                )
            )
        self._complete_src = self._tensor(_SRC_TYPE[list(_COMPLETE)])
        self._complete_dst = self._tensor(_DST_TYPE[list(_COMPLETE)])

        self.gat_weights: list[list[Tensor]] = []
        self.gat_bias: list[Tensor] = []
        edge_blocks = []
        for conv, layout in zip(policy.gat, self.layouts, strict=True):
            per_type = []
            for ti, t in enumerate(NODE_TYPES):
                out_convs = [_conv(conv, r) for r in outgoing(t)]
                in_convs = [_conv(conv, r) for r in incoming(t)]
                in_dim = out_convs[0].lin_src.weight.shape[1]
                blocks = [c.lin_src.weight for c in out_convs]
                blocks += [_fold(c.lin_src.weight, c.att_src).T for c in out_convs]
                blocks += [_fold(c.lin_dst.weight, c.att_dst).T for c in in_convs]
                used = sum(b.shape[0] for b in blocks)
                blocks.append(torch.zeros(layout.row_width[ti] - layout.skip_dim - used, in_dim))
                if layout.skip_dim:
                    blocks.append(policy.gat_skip[t].weight)
                per_type.append(self._put(torch.cat(blocks, dim=0)))
            self.gat_weights.append(per_type)
            self.gat_bias.append(
                self._put(
                    torch.stack([sum(_conv(conv, r).bias for r in incoming(t)) for t in NODE_TYPES])
                )
            )
            edge_blocks.append(
                torch.stack(
                    [
                        _fold(_conv(conv, i).lin_edge.weight, _conv(conv, i).att_edge)
                        for i in range(len(RELATIONS))
                    ]
                )
            )
        # [EDGE_DIM, R * layers * H]: edge_attr @ this gives every relation's edge logit.
        edge = torch.stack(edge_blocks, dim=2)  # [R, EDGE_DIM, layers, H]
        self.edge_weights = self._put(edge.permute(1, 0, 2, 3).reshape(EDGE_DIM, -1))

    @property
    def packed_bytes(self) -> int:
        """Bytes of packed weights one forward reads, each once: at the specification's
        dimensions the forward's memory traffic, the other half of its CPU cost besides
        the arithmetic (docs/benchmarks.md)."""
        tensors = [self.encoder, self.edge_weights, *self.sage_complete, *self.sage_bias]
        tensors += [*self.gat_bias, *(t for layer in self.sage_stacked for t in layer)]
        tensors += [t for layer in self.gat_weights for t in layer]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ---------------------------------------------------------------- indices

    def _index(self, structure: GraphStructure) -> _Index:
        cached = structure.derived.get(self._key)
        if isinstance(cached, _Index):
            return cached
        index = self._build_index(structure)
        structure.derived[self._key] = index
        return index

    def _tensor(self, array: npt.ArrayLike) -> Tensor:
        return torch.as_tensor(np.asarray(array), dtype=torch.int64, device=self.device)

    def _build_index(self, s: GraphStructure) -> _Index:
        n, e = s.num_nodes, s.num_edges
        counts = np.array(s.counts)
        offsets = np.array(s.offsets)
        # GraphSAGE slots: (node, partial relation) bags, then the node's root slot.
        slots_per_node = _N_PARTIAL + 1
        sage_slot_off = np.concatenate(([0], np.cumsum(counts * slots_per_node)[:-1]))
        partial = _PARTIAL_POS[s.relation] >= 0
        dst_t = _DST_TYPE[s.relation[partial]]
        edge_slot = (
            sage_slot_off[dst_t]
            + s.dst_local[partial] * slots_per_node[dst_t]
            + _PARTIAL_POS[s.relation[partial]]
        )
        node_t = s.node_type
        local = np.arange(n) - offsets[node_t]
        root_slot = sage_slot_off[node_t] + local * slots_per_node[node_t] + _N_PARTIAL[node_t]
        num_slots = int((counts * slots_per_node).sum())
        slots = np.concatenate((edge_slot, root_slot))
        members = np.concatenate((s.src[partial], np.arange(n)))
        sizes = np.bincount(slots, minlength=num_slots)
        weights = np.concatenate((1.0 / sizes[edge_slot], np.ones(n)))
        order = np.argsort(slots, kind="stable")

        layers = len(self.layouts)
        h = self.config.gat_heads
        columns = (
            np.arange(e)[:, None] * (len(RELATIONS) * layers * h)
            + s.relation[:, None] * layers * h
            + np.arange(layers * h)[None, :]
        )
        return _Index(
            sage_input=self._tensor(members[order]),
            sage_offsets=self._tensor(np.concatenate(([0], np.cumsum(sizes)))),
            sage_weights=torch.as_tensor(weights[order], dtype=torch.float32, device=self.device),
            sage_slot_offsets=tuple(int(x) for x in sage_slot_off),
            nodes=torch.arange(n, dtype=torch.int64, device=self.device),
            type_offsets=self._tensor(np.concatenate(([0], np.cumsum(counts)))),
            node_type=self._tensor(node_t),
            slot=self._tensor(s.slot),
            edges=torch.arange(e, dtype=torch.int64, device=self.device),
            slot_offsets=self._tensor(np.concatenate(([0], np.cumsum(s.slot_sizes)))),
            edge_columns=self._tensor(columns.reshape(e, layers * h)),
            gat=tuple(self._gat_index(s, layout) for layout in self.layouts),
        )

    def _gat_index(self, s: GraphStructure, layout: _GatLayout) -> _GatIndex:
        h, c = layout.heads, layout.head_dim
        widths = np.array(layout.row_width)
        counts = np.array(s.counts)
        bases = np.concatenate(([0], np.cumsum(counts * widths)[:-1]))
        src_t, dst_t = _SRC_TYPE[s.relation], _DST_TYPE[s.relation]
        src_row = bases[src_t] + s.src_local * widths[src_t]
        dst_row = bases[dst_t] + s.dst_local * widths[dst_t]
        head = np.arange(h)[None, :]
        src_col = np.array([layout.src_alpha_column(t) for t in range(_T)])
        dst_col = np.array([layout.dst_alpha_column(t) for t in range(_T)])
        src_alpha = (src_row + src_col[src_t] + _OUT_POS[s.relation] * h)[:, None] + head
        dst_alpha = (dst_row + dst_col[dst_t] + _IN_POS[s.relation] * h)[:, None] + head
        message = (src_row + _OUT_POS[s.relation] * h * c)[:, None] // c + head  # [E, H]

        # Bags are (destination node, head); edges are already sorted by destination.
        per_node = np.bincount(s.dst, minlength=s.num_nodes)
        first = np.concatenate(([0], np.cumsum(per_node)[:-1]))
        rank = np.arange(s.num_edges) - first[s.dst]
        position = (h * first[s.dst] + rank)[:, None] + head * per_node[s.dst][:, None]
        message_rows = np.empty(s.num_edges * h, dtype=np.int64)
        message_rows[position.ravel()] = message.ravel()
        order = np.empty(s.num_edges * h, dtype=np.int64)
        order[position.ravel()] = np.arange(s.num_edges * h)
        bag_starts = h * first[:, None] + head * per_node[:, None]
        bag_offsets = np.concatenate((bag_starts.ravel(), [s.num_edges * h]))

        node_t = s.node_type
        local = np.arange(s.num_nodes) - np.array(s.offsets)[node_t]
        skip_start = (bases[node_t] + (local + 1) * widths[node_t] - layout.skip_dim) // c
        skip_rows = skip_start[:, None] + np.arange(layout.skip_dim // c)[None, :]
        return _GatIndex(
            size=int((counts * widths).sum()),
            bases=tuple(int(b) for b in bases),
            src_alpha=self._tensor(src_alpha),
            dst_alpha=self._tensor(dst_alpha),
            message_rows=self._tensor(message_rows),
            bag_offsets=self._tensor(bag_offsets),
            order=self._tensor(order),
            skip_rows=self._tensor(skip_rows.ravel()),
        )

    # ---------------------------------------------------------------- forward

    def __call__(self, graph: PolicyGraph, cancelled: Cancelled | None = None) -> PolicyOutput:
        with torch.inference_mode():
            h = self.embed(graph, cancelled)
            s = graph.structure
            out: PolicyOutput = self.heads(h, s.rows(SEED), s.rows(BLUEPRINT))
            return out

    def embed(self, graph: PolicyGraph, cancelled: Cancelled | None = None) -> Tensor:
        """Final node embeddings, stacked in schema order ([N, gat_dim]).

        ``cancelled`` is asked before each layer and each of its per-type GEMMs: once
        it answers True (the step that wanted this decision has stopped waiting for
        it) the forward stops with :class:`InferenceCancelled`, so a late decision
        stops taking CPU time from the training step within a fraction of a layer.
        """
        s = graph.structure
        index = self._index(s)
        types = [(i, s.rows(t)) for i, t in enumerate(NODE_TYPES) if s.counts[i]]
        x = graph.x.to(self.device, non_blocking=True)
        h = torch.mm(x, self.encoder.T).relu_()

        for layer, stacked in enumerate(self.sage_stacked):
            _check(cancelled)
            type_means = F.embedding_bag(
                index.nodes, h, index.type_offsets, mode="mean", include_last_offset=True
            )
            complete = torch.bmm(
                type_means.index_select(0, self._complete_src).unsqueeze(1),
                self.sage_complete[layer],
            ).squeeze(1)
            bias = self.sage_bias[layer].index_add(0, self._complete_dst, complete)
            node_bias = bias.index_select(0, index.node_type)
            means = F.embedding_bag(
                index.sage_input,
                h,
                index.sage_offsets,
                mode="sum",
                per_sample_weights=index.sage_weights,
                include_last_offset=True,
            )
            out = torch.empty_like(h)
            for i, rows in types:
                _check(cancelled)
                start = index.sage_slot_offsets[i]
                block = means[start : start + s.counts[i] * (int(_N_PARTIAL[i]) + 1)]
                torch.addmm(
                    node_bias[rows], block.view(s.counts[i], -1), stacked[i].T, out=out[rows]
                )
            h = out.relu_().add_(h)

        edge_attr = graph.edge_attr.to(self.device, non_blocking=True)
        edge_logits = torch.mm(edge_attr, self.edge_weights).view(-1).take(index.edge_columns)
        for layer, layout in enumerate(self.layouts):
            _check(cancelled)
            gi = index.gat[layer]
            heads, c = layout.heads, layout.head_dim
            buffer = torch.empty(gi.size, device=self.device)
            for i, rows in types:
                _check(cancelled)
                width = layout.row_width[i]
                view = buffer[gi.bases[i] : gi.bases[i] + s.counts[i] * width].view(-1, width)
                torch.mm(h[rows], self.gat_weights[layer][i].T, out=view)
            logits = buffer.take(gi.src_alpha).add_(buffer.take(gi.dst_alpha))
            logits.add_(edge_logits[:, layer * heads : (layer + 1) * heads])
            logits = F.leaky_relu_(logits, GAT_NEGATIVE_SLOPE)
            peak = F.embedding_bag(
                index.edges, logits, index.slot_offsets, mode="max", include_last_offset=True
            )
            weights = logits.sub_(peak.index_select(0, index.slot)).exp_()
            total = F.embedding_bag(
                index.edges, weights, index.slot_offsets, mode="sum", include_last_offset=True
            )
            weights.div_(total.index_select(0, index.slot).add_(1e-16))
            rows_c = buffer.view(-1, c)
            out = F.embedding_bag(
                gi.message_rows,
                rows_c,
                gi.bag_offsets,
                mode="sum",
                per_sample_weights=weights.view(-1).take(gi.order),
                include_last_offset=True,
            ).view(s.num_nodes, heads * c)
            out.add_(self.gat_bias[layer].index_select(0, index.node_type))
            skip = (
                rows_c.index_select(0, gi.skip_rows).view(s.num_nodes, -1) if layout.skip_dim else h
            )
            h = F.elu_(out).add_(skip)
        return h


class InferenceCancelled(Exception):
    """The forward was stopped between layers because its result is no longer wanted."""


Cancelled = Callable[[], bool]


def _check(cancelled: Cancelled | None) -> None:
    if cancelled is not None and cancelled():
        raise InferenceCancelled


def _conv(hetero: nn.Module, relation: int) -> Any:
    """The PyG convolution of ``relation`` inside a HeteroConv layer."""
    return cast(Any, hetero).convs[RELATIONS[relation].key]


def _fold(weight: Tensor, attention: Tensor) -> Tensor:
    """[in, H]: ``x @ result == ((x @ weight.T).view(H, C) * attention).sum(-1)``.

    GAT uses the destination projection (and the edge projection) only through its dot
    product with an attention vector, so the two linear maps fold into one.
    """
    heads, channels = attention.shape[-2], attention.shape[-1]
    return torch.einsum("hci,hc->ih", weight.view(heads, channels, -1), attention.view(heads, -1))
