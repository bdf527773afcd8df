"""The simulated host as the policy and Kasmina see it: its ``HostTopology``, seed slots,
packet keys, and each blueprint's real parameter count on each layer.

Names follow the real host (``tolaria.models.host_topology``): layer ``layer<i>``,
activation ``<layer>.out``, parameters ``<layer>.weight`` and ``<layer>.bias``, seed
slot ``<layer>.s<k>``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tamiyo_bus.policy.topology import ActivationSpec, HostTopology, LayerSpec, ParameterSpec
from tamiyo_bus.tolaria.packet import GRADIENT_NORM_EMA
from tamiyo_bus.urza.adapters import parameter_count
from tamiyo_bus.urza.blueprint import AdapterKind, Blueprint
from tamiyo_bus.urza_client import BlueprintMetadata

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
CONV_KERNEL_AREA = 9  # a 3x3 convolution


@dataclass(frozen=True)
class SimHost:
    topology: HostTopology
    layer_kinds: tuple[str, ...]
    layer_width: int
    layer_parameters: IntArray  # [L]
    weight_fraction: FloatArray  # [L] share of a layer's squared gradient norm in its weight
    seed_ids: tuple[str, ...]  # [S], layer-major
    seed_layer: IntArray  # [S]
    seed_index: dict[str, int]
    blueprints: tuple[Blueprint, ...]
    blueprint_index: dict[str, int]
    metadata: dict[str, BlueprintMetadata]
    adapter_parameters: IntArray  # [B, L] a seed's parameters on each layer (0: misfit)
    layer_gradient_keys: tuple[str, ...]
    layer_gradient_ema_keys: tuple[str, ...]
    weight_gradient_keys: tuple[str, ...]
    bias_gradient_keys: tuple[str, ...]

    @property
    def host_parameters(self) -> int:
        return int(self.layer_parameters.sum())

    @property
    def layers(self) -> int:
        return len(self.layer_kinds)

    def candidate_blueprints(self) -> tuple[str, ...]:
        """The blueprint ids the policy may choose from (the quarantined one included:
        the graph builder's masks must keep it out)."""
        return tuple(b.blueprint_id for b in self.blueprints)


def _layer_parameters(kind: str, width: int) -> tuple[int, int]:
    area = CONV_KERNEL_AREA if kind == "conv2d" else 1
    return area * width * width, width


def build_host(
    layer_kinds: Sequence[str], width: int, slots_per_layer: int, blueprints: Sequence[Blueprint]
) -> SimHost:
    """The host and its tables; adapter sizes are measured by building each adapter
    once (Urza's own ``parameter_count``; every layer has the same width)."""
    kinds = tuple(layer_kinds)
    ids = tuple(f"layer{i}" for i in range(len(kinds)))
    weights_biases = [_layer_parameters(kind, width) for kind in kinds]
    layer_parameters = np.array([w + b for w, b in weights_biases], dtype=np.int64)
    topology = HostTopology(
        layers=tuple(
            LayerSpec(layer_id, kind, depth, int(count))
            for depth, (layer_id, kind, count) in enumerate(
                zip(ids, kinds, layer_parameters, strict=True)
            )
        ),
        layer_edges=tuple(itertools.pairwise(ids)),
        activations=tuple(ActivationSpec(f"{i}.out", i, "gelu") for i in ids),
        parameters=tuple(
            ParameterSpec(f"{i}.{name}", f"{i}.out", name, numel)
            for i, (w, b) in zip(ids, weights_biases, strict=True)
            for name, numel in (("weight", w), ("bias", b))
        ),
    )
    seed_ids = tuple(f"{i}.s{k}" for i in ids for k in range(slots_per_layer))
    adapter = np.zeros((len(blueprints), len(kinds)), dtype=np.int64)
    for b, blueprint in enumerate(blueprints):
        fits = np.array([kind in blueprint.layer_kinds for kind in kinds])
        if fits.any():
            adapter[b, fits] = parameter_count(blueprint.constructor, width)
    return SimHost(
        topology=topology,
        layer_kinds=kinds,
        layer_width=width,
        layer_parameters=layer_parameters,
        weight_fraction=np.array([w / (w + b) for w, b in weights_biases]),
        seed_ids=seed_ids,
        seed_layer=np.repeat(np.arange(len(kinds), dtype=np.int64), slots_per_layer),
        seed_index={s: i for i, s in enumerate(seed_ids)},
        blueprints=tuple(blueprints),
        blueprint_index={b.blueprint_id: i for i, b in enumerate(blueprints)},
        metadata={b.blueprint_id: b.metadata() for b in blueprints},
        adapter_parameters=adapter,
        layer_gradient_keys=tuple(f"layer/{i}/gradient_norm" for i in ids),
        layer_gradient_ema_keys=tuple(f"layer/{i}/{GRADIENT_NORM_EMA}" for i in ids),
        weight_gradient_keys=tuple(f"parameter/{i}.weight/gradient_norm" for i in ids),
        bias_gradient_keys=tuple(f"parameter/{i}.bias/gradient_norm" for i in ids),
    )


def adapter_efficiency(blueprints: Sequence[Blueprint], low_rank_efficiency: float) -> FloatArray:
    """[B] the share of a deficit each blueprint's adapter family can cure at full size."""
    return np.array(
        [
            low_rank_efficiency if b.constructor.kind is AdapterKind.LOW_RANK else 1.0
            for b in blueprints
        ]
    )
