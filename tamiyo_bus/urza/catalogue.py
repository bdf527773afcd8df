"""The catalogue a new Urza store is seeded with.

Sizes span cheap to expressive so the policy has a real trade-off to make: tier grows
with cost, risk with capacity (a wide adapter can disturb a host more). One entry is
seeded quarantined, as a library that has pulled a blueprint after field trials would
hold it; the policy's masks must never offer it.
"""

from __future__ import annotations

from tamiyo_bus.urza.adapters import INIT_SCALE, parameter_count
from tamiyo_bus.urza.blueprint import (
    REFERENCE_WIDTH,
    AdapterKind,
    Blueprint,
    ConstructorSpec,
    ParameterBounds,
)

LR_RATIO = "lr_ratio"  # the seed's learning rate relative to the host's
DEFAULT_ALLOWED: ParameterBounds = {INIT_SCALE: (0.0, 0.05), LR_RATIO: (0.1, 10.0)}


def make_blueprint(
    blueprint_id: str,
    name: str,
    kind: AdapterKind,
    size: int,
    *,
    tier: int,
    risk: float,
    quarantined: bool = False,
    quarantine_reason: str = "",
    allowed_parameters: ParameterBounds = DEFAULT_ALLOWED,
) -> Blueprint:
    """A blueprint whose parameter count is measured by building it."""
    spec = ConstructorSpec(kind, size)
    return Blueprint(
        blueprint_id=blueprint_id,
        name=name,
        tier=tier,
        parameter_count=parameter_count(spec, REFERENCE_WIDTH),
        risk=risk,
        constructor=spec,
        allowed_parameters=dict(allowed_parameters),
        quarantined=quarantined,
        quarantine_reason=quarantine_reason,
    )


def default_catalogue() -> tuple[Blueprint, ...]:
    """The seed catalogue: MLP, low-rank and gated adapters; conv adapters."""
    mlp, low, gated = AdapterKind.RESIDUAL_MLP, AdapterKind.LOW_RANK, AdapterKind.GATED_MLP
    conv = AdapterKind.CONV_RESIDUAL
    return (
        make_blueprint("mlp-res-8", "residual MLP, 8 hidden", mlp, 8, tier=0, risk=0.05),
        make_blueprint("mlp-res-16", "residual MLP, 16 hidden", mlp, 16, tier=1, risk=0.1),
        make_blueprint("mlp-res-32", "residual MLP, 32 hidden", mlp, 32, tier=1, risk=0.15),
        make_blueprint("mlp-res-64", "residual MLP, 64 hidden", mlp, 64, tier=2, risk=0.25),
        make_blueprint("lowrank-4", "low-rank, rank 4", low, 4, tier=0, risk=0.05),
        make_blueprint("lowrank-16", "low-rank, rank 16", low, 16, tier=1, risk=0.1),
        make_blueprint("gated-16", "gated MLP, 16 hidden", gated, 16, tier=1, risk=0.1),
        make_blueprint("gated-64", "gated MLP, 64 hidden", gated, 64, tier=2, risk=0.2),
        make_blueprint("conv-res-8", "conv residual, 8 channels", conv, 8, tier=1, risk=0.1),
        make_blueprint("conv-res-32", "conv residual, 32 channels", conv, 32, tier=2, risk=0.25),
        make_blueprint(
            "mlp-res-512", "residual MLP, 512 hidden", mlp, 512, tier=3, risk=0.9,
            quarantined=True, quarantine_reason="diverged the host in field trials (loss spikes)",
        ),
    )  # fmt: skip
