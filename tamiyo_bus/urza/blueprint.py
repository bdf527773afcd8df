"""Blueprint records and the constructor specs Kasmina builds from them.

Kept free of torch and SQLite so that the record, its JSON form and its validation can
be used (and tested) anywhere: by the store, the CLI and Kasmina.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from tamiyo_bus.urza_client import BlueprintMetadata

REFERENCE_WIDTH = 128
"""The layer width (features, or channels for conv layers) at which a blueprint's
stored parameter count is measured: one number comparable across blueprints. Kasmina
reports the real count of each seed, which scales with the layer it grows on."""


class AdapterKind(StrEnum):
    """The adapter families Kasmina can build."""

    RESIDUAL_MLP = "residual_mlp"  # x -> W2 gelu(W1 x); size = hidden width
    LOW_RANK = "low_rank"  # x -> U V x; size = rank
    GATED_MLP = "gated_mlp"  # x -> sigmoid(g(x)) * W2 gelu(W1 x); size = hidden width
    CONV_RESIDUAL = "conv_residual"  # x -> conv1x1(gelu(conv3x3(x))); size = channels


LAYER_KINDS: Mapping[AdapterKind, tuple[str, ...]] = {
    AdapterKind.RESIDUAL_MLP: ("linear",),
    AdapterKind.LOW_RANK: ("linear",),
    AdapterKind.GATED_MLP: ("linear",),
    AdapterKind.CONV_RESIDUAL: ("conv2d",),
}
"""The host layer kinds each adapter family fits (its input and output shape)."""


@dataclass(frozen=True, slots=True)
class ConstructorSpec:
    """How to build the adapter: family and size (hidden width, rank or channels)."""

    kind: AdapterKind
    size: int

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"constructor size must be positive, got {self.size}")

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind.value, "size": self.size}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ConstructorSpec:
        data = json.loads(text)
        return cls(AdapterKind(data["kind"]), int(data["size"]))


ParameterBounds = Mapping[str, tuple[float, float]]
_F32_SLACK = 1e-6  # relative; float32 carries about 7 significant digits


@dataclass(frozen=True, slots=True)
class Blueprint:
    """One library entry.

    ``allowed_parameters`` bounds what a germination command may set for this
    blueprint (name -> inclusive [low, high]); Kasmina refuses anything else, so a
    policy cannot configure a blueprint into a shape nobody reviewed.
    """

    blueprint_id: str
    name: str
    tier: int
    parameter_count: int  # at REFERENCE_WIDTH
    risk: float  # 0 (safe) .. 1 (risky)
    constructor: ConstructorSpec
    allowed_parameters: ParameterBounds = field(default_factory=dict)
    quarantined: bool = False
    quarantine_reason: str = ""

    def __post_init__(self) -> None:
        if not self.blueprint_id or any(c.isspace() for c in self.blueprint_id):
            raise ValueError(f"invalid blueprint id {self.blueprint_id!r}")
        if not 0.0 <= self.risk <= 1.0:
            raise ValueError(f"risk must lie in [0, 1], got {self.risk}")
        if self.tier < 0 or self.parameter_count < 0:
            raise ValueError("tier and parameter_count must not be negative")
        for name, (low, high) in self.allowed_parameters.items():
            if low > high:
                raise ValueError(f"allowed parameter {name}: low {low} > high {high}")

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        return LAYER_KINDS[self.constructor.kind]

    def metadata(self) -> BlueprintMetadata:
        """What Tamiyo sees of this entry."""
        return BlueprintMetadata(
            blueprint_id=self.blueprint_id,
            tier=self.tier,
            parameter_count=self.parameter_count,
            risk=self.risk,
            quarantined=self.quarantined,
            compatible_layer_kinds=self.layer_kinds,
        )

    def check_parameters(self, parameters: Mapping[str, float]) -> str | None:
        """None when every parameter is allowed and within bounds, else why not.

        Commands carry parameters as float32, so a bound is matched within float32
        rounding: 0.05 sent in a command must pass a bound of 0.05.
        """
        for name, value in parameters.items():
            bounds = self.allowed_parameters.get(name)
            if bounds is None:
                return f"parameter {name!r} is not allowed for {self.blueprint_id}"
            low, high = bounds
            if (
                not low - _F32_SLACK * max(1.0, abs(low))
                <= value
                <= high + _F32_SLACK * max(1.0, abs(high))
            ):
                return f"parameter {name}={value} outside [{bounds[0]}, {bounds[1]}]"
        return None
