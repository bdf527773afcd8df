"""The host model's static description: layers, activations, parameters, adjacency.

The host topology does not change within a run, so the graph builder takes it once at
construction and caches every index derived from it; only seed placement and
blueprint membership vary from step to step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LayerSpec:
    layer_id: str
    kind: str  # e.g. "linear", "conv2d", "attention": hashed into a categorical feature
    depth: int
    parameter_count: int


@dataclass(frozen=True, slots=True)
class ActivationSpec:
    activation_id: str
    layer_id: str  # the layer that produces it
    kind: str


@dataclass(frozen=True, slots=True)
class ParameterSpec:
    parameter_id: str
    activation_id: str  # the activation this parameter group shapes
    kind: str  # e.g. "weight", "bias", "norm"
    numel: int


@dataclass(frozen=True, slots=True)
class HostTopology:
    """What the policy knows about the host network, fixed for a run.

    ``layer_edges`` are the host model's real data-flow edges (src layer id, dst layer
    id); a skip connection is an edge between layers more than one depth apart.
    """

    layers: tuple[LayerSpec, ...]
    layer_edges: tuple[tuple[str, str], ...]
    activations: tuple[ActivationSpec, ...]
    parameters: tuple[ParameterSpec, ...]

    def __post_init__(self) -> None:
        layer_ids = [layer.layer_id for layer in self.layers]
        if len(set(layer_ids)) != len(layer_ids):
            raise ValueError("HostTopology: duplicate layer ids")
        known_layers = set(layer_ids)
        for src, dst in self.layer_edges:
            if src not in known_layers or dst not in known_layers:
                raise ValueError(f"HostTopology: edge {src}->{dst} names an unknown layer")
        activation_ids = [a.activation_id for a in self.activations]
        if len(set(activation_ids)) != len(activation_ids):
            raise ValueError("HostTopology: duplicate activation ids")
        for activation in self.activations:
            if activation.layer_id not in known_layers:
                raise ValueError(
                    f"HostTopology: activation {activation.activation_id} names unknown "
                    f"layer {activation.layer_id}"
                )
        known_activations = set(activation_ids)
        parameter_ids = [p.parameter_id for p in self.parameters]
        if len(set(parameter_ids)) != len(parameter_ids):
            raise ValueError("HostTopology: duplicate parameter ids")
        for parameter in self.parameters:
            if parameter.activation_id not in known_activations:
                raise ValueError(
                    f"HostTopology: parameter {parameter.parameter_id} names unknown "
                    f"activation {parameter.activation_id}"
                )
