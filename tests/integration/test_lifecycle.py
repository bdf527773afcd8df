"""Lifecycle transitions and gates, pure and table-driven."""

from __future__ import annotations

import math

import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.kasmina.lifecycle import (
    TRANSITIONS,
    GateInputs,
    GateSettings,
    check_gate,
    next_stage,
)
from tamiyo_bus.policy.actions import ACTION_SPACE

S = pb.SeedLifecycleStage
SETTINGS = GateSettings()  # min steps 20, max grad norm 100, tolerance 5 %, 50 % params, 8 live
D, B, T, SH, PR = (
    S.SEED_STAGE_DORMANT,
    S.SEED_STAGE_BLENDING,
    S.SEED_STAGE_TRAINING,
    S.SEED_STAGE_SHADOWING,
    S.SEED_STAGE_PROBATIONARY,
)


def test_executor_and_policy_agree_on_which_stage_each_operation_applies_to() -> None:
    """The policy's masks and Kasmina's lifecycle are two views of one table."""
    for spec in ACTION_SPACE:
        if spec.seed_operation != pb.SEED_OP_UNKNOWN:
            assert set(TRANSITIONS[spec.seed_operation]) == set(spec.seed_stages), spec.name


@pytest.mark.parametrize(
    ("operation", "stage", "expected"),
    [
        (pb.SEED_OP_GERMINATE, D, S.SEED_STAGE_GERMINATED),
        (pb.SEED_OP_START_TRAINING, S.SEED_STAGE_GERMINATED, S.SEED_STAGE_TRAINING),
        (pb.SEED_OP_START_BLENDING, S.SEED_STAGE_TRAINING, S.SEED_STAGE_BLENDING),
        (pb.SEED_OP_ADVANCE, S.SEED_STAGE_BLENDING, S.SEED_STAGE_SHADOWING),
        (pb.SEED_OP_ADVANCE, S.SEED_STAGE_SHADOWING, S.SEED_STAGE_PROBATIONARY),
        (pb.SEED_OP_FOSSILIZE, S.SEED_STAGE_PROBATIONARY, S.SEED_STAGE_FOSSILIZED),
        (pb.SEED_OP_CULL, S.SEED_STAGE_BLENDING, S.SEED_STAGE_CULLED),
        (pb.SEED_OP_CULL, S.SEED_STAGE_GERMINATED, S.SEED_STAGE_CULLED),
        (pb.SEED_OP_GERMINATE, S.SEED_STAGE_TRAINING, None),
        (pb.SEED_OP_START_BLENDING, S.SEED_STAGE_GERMINATED, None),
        (pb.SEED_OP_FOSSILIZE, S.SEED_STAGE_SHADOWING, None),
        (pb.SEED_OP_CULL, S.SEED_STAGE_FOSSILIZED, None),
        (pb.SEED_OP_CULL, S.SEED_STAGE_DORMANT, None),
        (pb.SEED_OP_ADVANCE, S.SEED_STAGE_EMBARGOED, None),
    ],
)
def test_transitions(operation: int, stage: int, expected: int | None) -> None:
    assert next_stage(operation, stage) == expected


HEALTHY = GateInputs(
    steps_in_stage=30,
    alpha=1.0,
    seed_gradient_norm=1.5,
    loss_ema=0.50,
    blend_baseline_loss=0.50,
    host_parameters=10_000,
    seed_parameters=1_000,
    live_seeds=1,
)


def _with(**changes: object) -> GateInputs:
    fields = {name: getattr(HEALTHY, name) for name in HEALTHY.__slots__}
    fields.update(changes)
    return GateInputs(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("operation", "stage", "inputs", "gate"),
    [
        # germination: system impact only
        (pb.SEED_OP_GERMINATE, D, _with(added_parameters=3_000), ""),
        (
            pb.SEED_OP_GERMINATE,
            S.SEED_STAGE_DORMANT,
            _with(added_parameters=4_001),
            "system_impact",
        ),
        (pb.SEED_OP_GERMINATE, D, _with(live_seeds=8), "system_impact"),
        # start blending: gradient health, then enough training, no violations
        (pb.SEED_OP_START_BLENDING, T, HEALTHY, ""),
        (pb.SEED_OP_START_BLENDING, T, _with(seed_gradient_norm=math.nan), "gradient_health"),
        (pb.SEED_OP_START_BLENDING, T, _with(seed_gradient_norm=math.inf), "gradient_health"),
        (pb.SEED_OP_START_BLENDING, T, _with(seed_gradient_norm=101.0), "gradient_health"),
        (pb.SEED_OP_START_BLENDING, T, _with(steps_in_stage=19), "stability"),
        (pb.SEED_OP_START_BLENDING, T, _with(isolation_violations=1), "stability"),
        # blending -> shadowing: the ramp must be complete
        (pb.SEED_OP_ADVANCE, B, HEALTHY, ""),
        (pb.SEED_OP_ADVANCE, B, _with(alpha=0.99), "stability"),
        (pb.SEED_OP_ADVANCE, B, _with(seed_gradient_norm=math.nan), "gradient_health"),
        # shadowing -> probationary: time in stage and no loss regression
        (pb.SEED_OP_ADVANCE, SH, HEALTHY, ""),
        (pb.SEED_OP_ADVANCE, SH, _with(loss_ema=0.525), ""),  # exactly at the tolerance
        (pb.SEED_OP_ADVANCE, SH, _with(loss_ema=0.53), "stability"),
        (pb.SEED_OP_ADVANCE, SH, _with(loss_ema=math.nan), "stability"),
        (pb.SEED_OP_ADVANCE, SH, _with(steps_in_stage=5), "stability"),
        # fossilisation
        (pb.SEED_OP_FOSSILIZE, PR, HEALTHY, ""),
        (pb.SEED_OP_FOSSILIZE, PR, _with(loss_ema=0.9), "stability"),
        (pb.SEED_OP_FOSSILIZE, PR, _with(seed_gradient_norm=500.0), "gradient_health"),
        (pb.SEED_OP_FOSSILIZE, PR, _with(isolation_violations=2), "stability"),
        # culling and starting training are always allowed
        (pb.SEED_OP_CULL, B, _with(seed_gradient_norm=math.nan, loss_ema=9.0), ""),
        (pb.SEED_OP_START_TRAINING, S.SEED_STAGE_GERMINATED, _with(steps_in_stage=0), ""),
    ],
)
def test_gates(operation: int, stage: int, inputs: GateInputs, gate: str) -> None:
    result = check_gate(operation, stage, inputs, SETTINGS)
    assert result.passed == (gate == "")
    assert result.gate == gate
    if gate:
        assert result.detail
