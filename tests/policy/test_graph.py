"""Graph builder: relations, presence masks, coverage, blueprint identity, structure
cache, running normalisation off the step path, stable hashing."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.policy.features import (
    BLOCK_OFFSETS,
    FEATURE_SPECS,
    NormalizerSnapshot,
    RunningNormalizer,
)
from tamiyo_bus.policy.graph import GraphBuilder, PolicyGraph
from tamiyo_bus.policy.registry import bucket, registry_digest
from tamiyo_bus.policy.schema import NODE_TYPES, RELATIONS, incoming
from tamiyo_bus.urza_client import BlueprintMetadata
from tests import states as synthetic

SIZE = synthetic.REFERENCE_SIZE


def setup(
    normalizer: RunningNormalizer | None = None,
) -> tuple[GraphBuilder, dict[str, BlueprintMetadata], random.Random]:
    host = synthetic.topology(SIZE)
    metadata = {m.blueprint_id: m for m in synthetic.catalogue(SIZE, quarantined=(2,))}
    builder = GraphBuilder(host, list(metadata), normalizer or RunningNormalizer(update=False))
    return builder, metadata, random.Random(5)


def edges(graph: PolicyGraph, src: str, name: str, dst: str) -> set[tuple[int, int]]:
    index = graph.edge_index_dict()[(src, name, dst)]
    return {(int(a), int(b)) for a, b in index.T}


def test_schema_has_about_twenty_relations_and_every_type_receives_messages() -> None:
    assert 18 <= len(RELATIONS) <= 24
    assert len({r.key for r in RELATIONS}) == len(RELATIONS)
    assert all(incoming(t) for t in NODE_TYPES)


def test_relations_follow_the_packet_and_the_host() -> None:
    builder, metadata, rng = setup()
    packet = synthetic.packet(SIZE, builder.topology, rng)
    graph = builder.build(packet, metadata)
    assert graph.structure.counts == (1, 16, 12, 8, 12, 12)
    seeds = list(packet.seed_states)
    layer_of = {s.seed_id: int(s.layer_id.removeprefix("layer")) for s in seeds}
    assert edges(graph, "global", "oversees", "seed") == {(0, i) for i in range(16)}
    assert edges(graph, "seed", "monitors", "layer") == {
        (i, layer_of[s.seed_id]) for i, s in enumerate(seeds)
    }
    assert edges(graph, "layer", "monitored_by", "seed") == {
        (b, a) for a, b in edges(graph, "seed", "monitors", "layer")
    }
    assert edges(graph, "seed", "peers", "seed") == {
        (i, j)
        for i, a in enumerate(seeds)
        for j, b in enumerate(seeds)
        if i != j and layer_of[a.seed_id] == layer_of[b.seed_id]
    }
    host_edges = {
        (int(s.removeprefix("layer")), int(d.removeprefix("layer")))
        for s, d in builder.topology.layer_edges
    }
    assert edges(graph, "layer", "feeds", "layer") == host_edges
    assert len(edges(graph, "blueprint", "fits", "layer")) == 8 * 12
    assert len(edges(graph, "parameter", "budgets", "blueprint")) == 12 * 8
    # Skip connections are marked in the edge feature.
    feeds = graph.edge_attr_dict()[("layer", "feeds", "layer")]
    index = graph.edge_index_dict()[("layer", "feeds", "layer")]
    skips = {(int(a), int(b)) for (a, b), f in zip(index.T, feeds, strict=True) if f[3] == 1.0}
    assert skips == {(a, b) for a, b in host_edges if b - a > 1}


def test_blueprint_identity_comes_from_seed_state_not_packet_ids() -> None:
    builder, metadata, rng = setup()
    packet = synthetic.packet(SIZE, builder.topology, rng)
    packet.packet_id = "bp5"  # an id that looks like a blueprint must not matter
    for state in packet.seed_states:
        state.blueprint_id = ""
    packet.seed_states[1].blueprint_id = "bp3"
    packet.seed_states[4].blueprint_id = "not-in-the-catalogue"
    graph = builder.build(packet, metadata)
    assert graph.blueprint_ids[-1] == "not-in-the-catalogue"  # an extra node, not a candidate
    grown = edges(graph, "seed", "grown_from", "blueprint")
    assert grown == {(1, 3), (4, len(graph.blueprint_ids) - 1)}
    # The extra blueprint can never be germinated; the quarantined one neither.
    assert not bool(graph.masks.blueprint[:, -1].any())
    assert not bool(graph.masks.blueprint[:, 2].any())


def test_missing_values_are_absent_not_zero_and_coverage_is_reported() -> None:
    builder, metadata, rng = setup()
    packet = synthetic.packet(SIZE, builder.topology, rng)
    packet.validation_loss = math.nan
    del packet.training_metrics["layer/layer3/gradient_norm"]
    metadata.pop("bp1")
    graph = builder.build(packet, metadata)
    spec = FEATURE_SPECS["global"]
    column = spec.values.index("validation_loss")
    assert graph.raw["global"].presence[0, column] == 0.0
    x = graph.x.numpy()
    start = BLOCK_OFFSETS["global"]
    assert x[0, start + column] == 0.0 and x[0, start + spec.num_values + column] == 0.0
    layer_column = FEATURE_SPECS["layer"].values.index("gradient_norm")
    assert graph.raw["layer"].presence[3, layer_column] == 0.0
    assert graph.raw["layer"].presence[4, layer_column] == 1.0
    blueprint_presence = graph.raw["blueprint"].presence
    assert not blueprint_presence[1, :4].any() and blueprint_presence[0, :4].all()
    for node_type in NODE_TYPES:
        expected = float(graph.raw[node_type].presence.mean())
        assert graph.coverage[node_type] == pytest.approx(expected)
    assert graph.coverage["global"] < 1.0


def test_categorical_ids_use_a_stable_hash() -> None:
    builder, metadata, rng = setup()
    graph = builder.build(synthetic.packet(SIZE, builder.topology, rng), metadata)
    spec = FEATURE_SPECS["layer"]
    start = BLOCK_OFFSETS["layer"] + spec.categorical_offset("layer_kind")
    row = graph.structure.rows("layer").start
    hot = np.flatnonzero(graph.x.numpy()[row, start : start + 16])
    assert list(hot) == [bucket("layer_kind", builder.topology.layers[0].kind)]
    code = (
        "from tamiyo_bus.policy.registry import bucket, registry_digest;"
        "print(bucket('layer_kind', 'conv2d'), registry_digest())"
    )
    # A fresh interpreter with another string-hash salt computes the same bucket and
    # the same registry digest.
    child = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout == f"{bucket('layer_kind', 'conv2d')} {registry_digest()}\n"


def test_structure_is_cached_until_seed_placement_changes() -> None:
    builder, metadata, rng = setup()
    packet = synthetic.packet(SIZE, builder.topology, rng)
    first = builder.build(packet, metadata)
    packet.training_loss = 0.1
    assert builder.build(packet, metadata).structure is first.structure
    dormant = next(s for s in packet.seed_states if s.stage == pb.SEED_STAGE_DORMANT)
    dormant.stage = pb.SEED_STAGE_GERMINATED
    dormant.blueprint_id = "bp0"
    changed = builder.build(packet, metadata)
    assert changed.structure is not first.structure
    assert builder.structure_builds == 2


def test_running_statistics_are_updated_off_the_step_path() -> None:
    normalizer = RunningNormalizer(update=True)
    normalizer.start()
    builder, metadata, rng = setup(normalizer)
    before = normalizer.snapshot
    packets = [synthetic.packet(SIZE, builder.topology, rng, step=step) for step in range(20)]
    graphs = [builder.build(packet, metadata) for packet in packets]
    assert normalizer.snapshot is before  # building a graph never updates statistics
    losses = [packet.training_loss for packet in packets]
    for graph in graphs:
        normalizer.observe(graph.raw)
    assert normalizer.wait_idle(10.0)
    after = normalizer.snapshot
    column = FEATURE_SPECS["global"].values.index("training_loss")
    assert after.count["global"][column] == 20
    assert after.mean["global"][column] == pytest.approx(
        np.mean(np.array(losses, np.float32)), rel=1e-5
    )
    # The next graph is normalised with the new statistics.
    packet = synthetic.packet(SIZE, builder.topology, rng)
    graph = builder.build(packet, metadata)
    z = graph.x.numpy()[0, BLOCK_OFFSETS["global"] + column]
    expected = (np.float32(packet.training_loss) - after.shift["global"][column]) * after.scale[
        "global"
    ][column]
    assert z == pytest.approx(expected, rel=1e-5)


def test_a_full_normalizer_queue_drops_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Event(), threading.Event()
    merge = NormalizerSnapshot.merged

    def slow_merge(self: NormalizerSnapshot, batch: Any) -> NormalizerSnapshot:
        entered.set()
        release.wait()
        return merge(self, batch)

    monkeypatch.setattr(NormalizerSnapshot, "merged", slow_merge)
    normalizer = RunningNormalizer(update=True, queue_size=1)
    normalizer.start()
    builder, metadata, rng = setup(normalizer)
    graph = builder.build(synthetic.packet(SIZE, builder.topology, rng), metadata)
    normalizer.observe(graph.raw)
    assert entered.wait(5.0)  # the updater holds the first observation
    for _ in range(3):
        normalizer.observe(graph.raw)  # one fits the queue, two are dropped, none waits
    assert normalizer.worker.counters.dropped == 2
    release.set()
    assert normalizer.wait_idle(10.0)
    assert normalizer.worker.counters.handled == 2
    assert normalizer.close()
