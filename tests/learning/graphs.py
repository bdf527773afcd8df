"""Reference-size policy graphs of several structures, and actions sampled on them."""

from __future__ import annotations

import random

import torch

from tamiyo_bus.policy.actions import PolicyAction, select_action
from tamiyo_bus.policy.features import RunningNormalizer
from tamiyo_bus.policy.graph import GraphBuilder, PolicyGraph
from tamiyo_bus.policy.reference import PolicyConfig, ReferencePolicy
from tests import states as synthetic

TINY = PolicyConfig(hidden_dim=32, gat_heads=2, gat_head_dim=8, head_hidden_dim=32)


def builder(size: synthetic.StateSize = synthetic.REFERENCE_SIZE) -> GraphBuilder:
    host = synthetic.topology(size)
    ids = [m.blueprint_id for m in synthetic.catalogue(size)]
    return GraphBuilder(host, ids, RunningNormalizer(update=False))


def graphs(
    n: int,
    structures: int = 1,
    *,
    seed: int = 0,
    size: synthetic.StateSize = synthetic.REFERENCE_SIZE,
) -> list[PolicyGraph]:
    """``n`` graphs cycling over ``structures`` seed placements (seed 1 grown from a
    different blueprint in each)."""
    b, rng = builder(size), random.Random(seed)
    metadata = {m.blueprint_id: m for m in synthetic.catalogue(size)}
    out = []
    for i in range(n):
        packet = synthetic.packet(size, b.topology, rng, step=1000 + i)
        packet.seed_states[1].blueprint_id = f"bp{(1 + i % structures) % size.blueprints}"
        out.append(b.build(packet, metadata))
    return out


def sampled_actions(
    policy: ReferencePolicy, graph_list: list[PolicyGraph], seed: int = 1
) -> list[PolicyAction]:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return [
            select_action(policy(g), g.masks, greedy=False, generator=generator) for g in graph_list
        ]
