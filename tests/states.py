"""Synthetic host states of a given size and an in-memory blueprint catalogue, for the
tests and the benchmarks.

``reference_state`` is the size the step budgets are quoted at (16 seeds, 12 layers,
8 blueprints, 12 activations, 12 parameters); ``large_state`` the stress size
(64, 48, 16, 48, 48).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.policy.features import ACTIVATION_METRICS, LAYER_METRICS, PARAMETER_METRICS
from tamiyo_bus.policy.topology import ActivationSpec, HostTopology, LayerSpec, ParameterSpec
from tamiyo_bus.urza_client import BlueprintMetadata

_KINDS = ("linear", "conv2d", "attention", "norm")


@dataclass(frozen=True, slots=True)
class StateSize:
    seeds: int
    layers: int
    blueprints: int
    activations: int
    parameters: int


REFERENCE_SIZE = StateSize(16, 12, 8, 12, 12)
LARGE_SIZE = StateSize(64, 48, 16, 48, 48)


def topology(size: StateSize, *, skip_every: int = 4) -> HostTopology:
    """A host of ``size.layers`` layers in a chain with skip connections every
    ``skip_every`` layers; activations and parameters spread round-robin."""
    layers = tuple(
        LayerSpec(f"layer{i}", _KINDS[i % len(_KINDS)], i, 4096 * (1 + i % 5))
        for i in range(size.layers)
    )
    edges = [(f"layer{i}", f"layer{i + 1}") for i in range(size.layers - 1)]
    edges += [(f"layer{i}", f"layer{i + 2}") for i in range(0, size.layers - 2, max(skip_every, 1))]
    activations = tuple(
        ActivationSpec(f"act{i}", f"layer{i % size.layers}", ("relu", "gelu")[i % 2])
        for i in range(size.activations)
    )
    parameters = tuple(
        ParameterSpec(
            f"param{i}",
            f"act{i % size.activations}",
            ("weight", "bias", "norm")[i % 3],
            1024 * (1 + i % 7),
        )
        for i in range(size.parameters)
    )
    return HostTopology(layers, tuple(edges), activations, parameters)


def catalogue(size: StateSize, *, quarantined: tuple[int, ...] = ()) -> list[BlueprintMetadata]:
    return [
        BlueprintMetadata(
            blueprint_id=f"bp{i}",
            tier=i % 3,
            parameter_count=2048 * (1 + i),
            risk=round(i / max(size.blueprints, 1), 3),
            quarantined=i in quarantined,
            compatible_layer_kinds=() if i % 4 else ("linear", "attention"),
        )
        for i in range(size.blueprints)
    ]


def packet(
    size: StateSize,
    host: HostTopology,
    rng: random.Random,
    *,
    step: int = 1000,
    run_id: str = "synthetic-run",
) -> pb.SystemStatePacket:
    """A plausible state: seeds at every lifecycle stage, most metrics present."""
    state = pb.SystemStatePacket(
        version=1,
        packet_id=f"packet-{step}",
        training_run_id=run_id,
        current_epoch=step // 100,
        global_step=step,
        training_loss=rng.uniform(0.2, 2.0),
        validation_loss=rng.uniform(0.2, 2.0),
        validation_accuracy=rng.uniform(0.3, 0.99),
        timestamp_ns=1_700_000_000_000_000_000 + step,
    )
    metrics = state.training_metrics
    metrics["gradient_norm"] = rng.uniform(0.1, 5.0)
    metrics["samples_per_s"] = rng.uniform(1e3, 1e4)
    metrics["hook_latency_ms"] = rng.uniform(0.1, 2.0)
    for layer in host.layers:
        for name in LAYER_METRICS:
            metrics[f"layer/{layer.layer_id}/{name}"] = rng.uniform(0.0, 3.0)
    for activation in host.activations:
        for name in ACTIVATION_METRICS:
            metrics[f"activation/{activation.activation_id}/{name}"] = rng.uniform(0.0, 1.0)
    for parameter in host.parameters:
        for name in PARAMETER_METRICS:
            metrics[f"parameter/{parameter.parameter_id}/{name}"] = rng.uniform(0.0, 2.0)
    stages = [s for s in pb.SeedLifecycleStage.values() if s != pb.SEED_STAGE_UNKNOWN]
    for i in range(size.seeds):
        layer = host.layers[i % len(host.layers)]
        stage = pb.SEED_STAGE_DORMANT if i % 3 == 0 else stages[i % len(stages)]
        seed = state.seed_states.add(
            seed_id=f"seed{i}",
            stage=stage,
            layer_depth=layer.depth,
            layer_id=layer.layer_id,
            alpha=rng.random() if stage != pb.SEED_STAGE_DORMANT else 0.0,
            gradient_norm=rng.uniform(0.0, 2.0),
            learning_rate=1e-3,
            age=rng.randrange(0, 500),
            risk_score=rng.random(),
        )
        if stage != pb.SEED_STAGE_DORMANT:
            seed.blueprint_id = f"bp{i % max(size.blueprints, 1)}"
            seed.metrics["loss_delta"] = rng.uniform(-0.1, 0.1)
    return state


class StaticBlueprintCatalog:
    """An in-memory blueprint library (Urza's store is the real one)."""

    def __init__(self, entries: Iterable[BlueprintMetadata]) -> None:
        self._entries = {entry.blueprint_id: entry for entry in entries}

    def lookup(self, blueprint_ids: Sequence[str]) -> Mapping[str, BlueprintMetadata]:
        return {i: self._entries[i] for i in blueprint_ids if i in self._entries}

    def ids(self) -> tuple[str, ...]:
        return tuple(self._entries)
