"""Checkpoints: safetensors round trip; mismatched architecture, registry or format are
refused with a clear error before any weight is loaded."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_bytes

from tamiyo_bus.policy.checkpoint import (
    CheckpointMismatchError,
    checkpoint_bytes,
    load_checkpoint,
    load_checkpoint_bytes,
    read_info,
    save_checkpoint,
)
from tamiyo_bus.policy.features import NormalizerSnapshot, RunningNormalizer
from tamiyo_bus.policy.graph import GraphBuilder, PolicyGraph
from tamiyo_bus.policy.reference import PolicyConfig, architecture_id
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.policy.serving import ServingPolicy
from tests import states as synthetic
from tests.policy.helpers import SMALL


def graph(normalizer: RunningNormalizer | None = None) -> PolicyGraph:
    size = synthetic.REFERENCE_SIZE
    host = synthetic.topology(size)
    metadata = {m.blueprint_id: m for m in synthetic.catalogue(size)}
    builder = GraphBuilder(host, list(metadata), normalizer or RunningNormalizer(update=False))
    return builder.build(synthetic.packet(size, host, random.Random(0)), metadata)


def statistics() -> NormalizerSnapshot:
    g = graph()
    return NormalizerSnapshot.initial().merged({t: [raw] for t, raw in g.raw.items()})


def test_round_trip_restores_weights_statistics_and_identity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = ServingPolicy(SMALL)
    stats = statistics()
    path = tmp_path / "policy.safetensors"
    save_checkpoint(path, trained, stats, policy_id="tamiyo", policy_version=7)
    info = read_info(path)
    assert info.policy_version == 7 and info.policy_id == "tamiyo"
    assert info.architecture_id == architecture_id(trained)
    assert info.registry_digest == registry_digest()

    fresh = ServingPolicy(SMALL)
    loaded, snapshot = load_checkpoint(path, fresh)
    assert loaded == info
    g = graph()
    assert torch.equal(fresh.fast(g).action_logits, trained.fast(g).action_logits)
    for node_type, count in stats.count.items():
        assert (snapshot.count[node_type] == count).all()
        assert (snapshot.mean[node_type] == stats.mean[node_type]).all()
    # Restored statistics normalise the next graph exactly as the saved ones would.
    restored = RunningNormalizer(update=False)
    restored.load(snapshot)
    original = RunningNormalizer(update=False)
    original.load(stats)
    assert torch.equal(graph(restored).x, graph(original).x)


def test_another_architecture_is_refused(tmp_path: Path) -> None:
    other = ServingPolicy(PolicyConfig(hidden_dim=16, gat_heads=2, gat_head_dim=8))
    data = checkpoint_bytes(other, statistics(), policy_id="x", policy_version=1)
    target = ServingPolicy(SMALL)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match="architecture") as error:
        load_checkpoint_bytes(data, target)
    assert architecture_id(other) in str(error.value)
    assert architecture_id(target) in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_another_registry_is_refused() -> None:
    policy = ServingPolicy(SMALL)
    tensors = {k: v.contiguous() for k, v in policy.state_dict().items()}
    metadata = {
        "format": "tamiyo-policy-checkpoint/1",
        "policy_id": "x",
        "policy_version": "1",
        "architecture_id": architecture_id(policy),
        "registry_digest": "0" * 64,
    }
    with pytest.raises(CheckpointMismatchError, match="registry digest"):
        load_checkpoint_bytes(save_bytes(tensors, metadata=metadata), policy)


@pytest.mark.parametrize(
    "data",
    [
        save_bytes({"w": torch.zeros(2)}),  # safetensors, but not a policy checkpoint
        b"\x80\x04\x95" + b"\x00" * 32,  # a pickle
        len(json.dumps({}).encode()).to_bytes(8, "little") + b"{}",
    ],
    ids=["foreign-safetensors", "pickle", "empty-header"],
)
def test_what_is_not_a_checkpoint_is_refused(data: bytes) -> None:
    with pytest.raises(CheckpointMismatchError):
        load_checkpoint_bytes(data, ServingPolicy(SMALL))


def test_loading_weights_repacks_the_serving_form() -> None:
    """A PolicyUpdate loads weights into a copy of the running module; the copy's fast
    form must then compute with the new weights."""
    torch.manual_seed(1)
    source = ServingPolicy(SMALL)
    target = ServingPolicy(SMALL)
    g = graph()
    assert not torch.equal(target.fast(g).action_logits, source.fast(g).action_logits)
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.fast(g).action_logits, source.fast(g).action_logits)
