"""The fast policy computes the PyG HeteroConv reference's function."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from tamiyo_bus.policy.actions import PolicyOutput
from tamiyo_bus.policy.features import RunningNormalizer
from tamiyo_bus.policy.graph import GraphBuilder, PolicyGraph
from tamiyo_bus.policy.network import FastPolicy, InferenceCancelled
from tamiyo_bus.policy.reference import PolicyConfig, ReferencePolicy
from tests import states as synthetic
from tests.policy.helpers import SMALL

RTOL = 1e-4


def random_graph(size: synthetic.StateSize, seed: int) -> PolicyGraph:
    rng = random.Random(seed)
    host = synthetic.topology(size, skip_every=rng.randint(1, 5))
    entries = synthetic.catalogue(size, quarantined=(1,))
    metadata = {m.blueprint_id: m for m in entries if rng.random() < 0.8}
    builder = GraphBuilder(host, [m.blueprint_id for m in entries], RunningNormalizer(update=False))
    packet = synthetic.packet(size, host, rng)
    for key in list(packet.training_metrics):
        if rng.random() < 0.2:
            del packet.training_metrics[key]
    for seed_state in packet.seed_states:
        if rng.random() < 0.2:
            seed_state.layer_id = "not-a-layer"  # placed by depth instead
    return builder.build(packet, metadata)


def assert_same(fast: torch.Tensor, reference: torch.Tensor) -> None:
    """Equal within RTOL relative to the tensor's magnitude."""
    assert fast.shape == reference.shape
    if reference.numel():
        reference = reference.detach()
        scale = max(float(reference.abs().max()), 1e-6)
        assert float((fast - reference).abs().max()) <= RTOL * scale


def compare(config: PolicyConfig, graph: PolicyGraph, seed: int) -> None:
    torch.manual_seed(seed)
    reference = ReferencePolicy(config).eval()
    for parameter in reference.parameters():  # well away from PyG's zero-initialised biases
        torch.nn.init.normal_(parameter, std=0.1)
    fast = FastPolicy(reference)
    with torch.no_grad():
        expected_h = reference.embed(graph)
        expected: PolicyOutput = reference(graph)
    assert_same(fast.embed(graph), expected_h)
    got = fast(graph)
    for f in dataclasses.fields(PolicyOutput):
        assert_same(getattr(got, f.name), getattr(expected, f.name))


SIZES = [
    synthetic.StateSize(1, 1, 1, 1, 1),
    synthetic.StateSize(5, 3, 2, 4, 7),
    synthetic.StateSize(9, 6, 5, 2, 11),
    synthetic.REFERENCE_SIZE,
    synthetic.LARGE_SIZE,
]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s.seeds}s{s.layers}l{s.blueprints}b")
def test_fast_policy_matches_reference_on_random_graphs(size: synthetic.StateSize) -> None:
    compare(SMALL, random_graph(size, seed=size.seeds), seed=size.layers)


def test_fast_policy_matches_reference_at_full_size() -> None:
    """The specification's dimensions (256 / 4 x 32) on the reference state."""
    compare(PolicyConfig(), random_graph(synthetic.REFERENCE_SIZE, seed=0), seed=0)


def test_structure_indices_are_reused_while_topology_is_unchanged() -> None:
    size = synthetic.REFERENCE_SIZE
    host = synthetic.topology(size)
    entries = synthetic.catalogue(size)
    metadata = {m.blueprint_id: m for m in entries}
    builder = GraphBuilder(host, list(metadata), RunningNormalizer(update=False))
    fast = FastPolicy(ReferencePolicy(SMALL))
    rng = random.Random(1)
    first = builder.build(synthetic.packet(size, host, rng, step=1), metadata)
    second = builder.build(synthetic.packet(size, host, rng, step=2), metadata)
    assert second.structure is first.structure
    fast(first)
    derived = dict(first.structure.derived)
    fast(second)
    assert first.structure.derived == derived  # nothing rebuilt for the second step
    assert builder.structure_builds == 1


def test_a_cancelled_forward_stops_between_layers_and_an_uncancelled_one_is_unchanged() -> None:
    graph = random_graph(synthetic.REFERENCE_SIZE, seed=5)
    fast = FastPolicy(ReferencePolicy(SMALL))
    asked: list[int] = []

    def after_two_layers() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(InferenceCancelled):
        fast(graph, after_two_layers)
    assert len(asked) == 3  # stopped at the third check, not at the end
    expected = fast(graph).action_logits
    assert torch.equal(fast(graph, lambda: False).action_logits, expected)
