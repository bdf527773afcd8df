"""The trainable policy, written plainly with PyG's HeteroConv.

This is the canonical form of Tamiyo's network: its parameters are what checkpoints
hold and what learning updates. It is slow on the step path (one small kernel
sequence per relation per layer), so inference runs :class:`FastPolicy`, which packs
these same parameters into grouped matmuls and computes the same function.

Architecture: typed linear encoders -> 2 x GraphSAGE (mean, 256) -> 2 x GAT (4 heads
x 32 = 128, edge features), each layer summed over relations, with residuals.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, HeteroConv, SAGEConv

from tamiyo_bus.policy.actions import PolicyOutput
from tamiyo_bus.policy.features import FEATURE_SPECS
from tamiyo_bus.policy.graph import EDGE_DIM, PolicyGraph
from tamiyo_bus.policy.heads import PolicyHeads
from tamiyo_bus.policy.schema import BLUEPRINT, NODE_TYPES, RELATIONS, SEED

ARCHITECTURE_FAMILY = "tamiyo-hgnn-v1"
GAT_NEGATIVE_SLOPE = 0.2


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Network dimensions; the defaults are the specification's full size."""

    hidden_dim: int = 256
    sage_layers: int = 2
    gat_heads: int = 4
    gat_head_dim: int = 32
    gat_layers: int = 2
    head_hidden_dim: int = 256

    @property
    def gat_dim(self) -> int:
        return self.gat_heads * self.gat_head_dim


class ReferencePolicy(nn.Module):
    """Typed encoders, HeteroConv(SAGEConv) x2, HeteroConv(GATConv) x2, shared heads."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PolicyConfig()
        hidden, gat = config.hidden_dim, config.gat_dim
        self.encoders = nn.ModuleDict(
            {t: nn.Linear(FEATURE_SPECS[t].width, hidden) for t in NODE_TYPES}
        )
        self.sage = nn.ModuleList(
            HeteroConv(
                {r.key: SAGEConv((hidden, hidden), hidden, aggr="mean") for r in RELATIONS},
                aggr="sum",
            )
            for _ in range(config.sage_layers)
        )
        self.gat = nn.ModuleList(
            HeteroConv(
                {
                    r.key: GATConv(
                        (hidden if layer == 0 else gat, hidden if layer == 0 else gat),
                        config.gat_head_dim,
                        heads=config.gat_heads,
                        negative_slope=GAT_NEGATIVE_SLOPE,
                        add_self_loops=False,
                        edge_dim=EDGE_DIM,
                    )
                    for r in RELATIONS
                },
                aggr="sum",
            )
            for layer in range(config.gat_layers)
        )
        # The first GAT layer narrows 256 -> 128, so its residual is a typed projection.
        self.gat_skip = nn.ModuleDict({t: nn.Linear(hidden, gat, bias=False) for t in NODE_TYPES})
        self.heads = PolicyHeads(gat, config.head_hidden_dim)

    def embed(self, graph: PolicyGraph) -> Tensor:
        """Final node embeddings, stacked in schema order ([N, gat_dim])."""
        device = graph.x.device
        edge_index = {k: v.to(device) for k, v in graph.edge_index_dict().items()}
        x = self.embed_typed(graph.x_dict(), edge_index, graph.edge_attr_dict())
        return torch.cat([x[t] for t in NODE_TYPES])

    def embed_typed(
        self,
        x_dict: dict[str, Tensor],
        edge_index: dict[tuple[str, str, str], Tensor],
        edge_attr: dict[tuple[str, str, str], Tensor],
    ) -> dict[str, Tensor]:
        """Final node embeddings per type from PyG's typed inputs.

        Taking the typed dictionaries (not a PolicyGraph) lets learning run a disjoint
        union of many graphs through one forward.
        """
        x = {t: F.relu(self.encoders[t](v)) for t, v in x_dict.items()}
        for conv in self.sage:
            out = conv(x, edge_index)
            x = {t: F.relu(out[t]) + x[t] for t in NODE_TYPES}
        for layer, conv in enumerate(self.gat):
            out = conv(x, edge_index, edge_attr_dict=edge_attr)
            skip = {t: self.gat_skip[t](x[t]) for t in NODE_TYPES} if layer == 0 else x
            x = {t: F.elu(out[t]) + skip[t] for t in NODE_TYPES}
        return x

    def forward(self, graph: PolicyGraph) -> PolicyOutput:
        h = self.embed(graph)
        s = graph.structure
        out: PolicyOutput = self.heads(h, s.rows(SEED), s.rows(BLUEPRINT))
        return out


def architecture_id(policy: ReferencePolicy) -> str:
    """Family, dimensions and a digest of every parameter's name and shape.

    Two policies with the same id accept each other's weights; any change to the
    relation set, feature widths or dimensions changes it.
    """
    shapes = sorted((name, list(p.shape)) for name, p in policy.state_dict().items())
    blob = json.dumps({"config": asdict(policy.config), "shapes": shapes}, sort_keys=True)
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
    c = policy.config
    return (
        f"{ARCHITECTURE_FAMILY}/sage{c.hidden_dim}x{c.sage_layers}"
        f"-gat{c.gat_heads}x{c.gat_head_dim}x{c.gat_layers}-{digest}"
    )
