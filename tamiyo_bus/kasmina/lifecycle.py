"""The seed lifecycle: which command moves a seed from which stage to which, and the
gates a move must pass. Pure data and functions, tested table by table.

    DORMANT -GERMINATE-> GERMINATED -START_TRAINING-> TRAINING -START_BLENDING->
    BLENDING -ADVANCE-> SHADOWING -ADVANCE-> PROBATIONARY -FOSSILIZE-> FOSSILIZED
    any active stage -CULL-> CULLED -> EMBARGOED (embargo_steps) -> RESETTING -> DORMANT

Gates are the executor's own judgement, independent of the policy's: a command whose
gate fails is refused and changes nothing.

- gradient health: the seed's gradient norm is finite and bounded;
- stability: the seed has spent its minimum steps in the stage, the training loss has
  not regressed past tolerance since blending began, and isolation was never violated;
- system impact: the seeds' parameters stay within a fraction of the host's, and the
  number of live seeds within a bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb

TRANSITIONS: Mapping[int, Mapping[int, pb.SeedLifecycleStage.ValueType]] = {
    pb.SEED_OP_GERMINATE: {pb.SEED_STAGE_DORMANT: pb.SEED_STAGE_GERMINATED},
    pb.SEED_OP_START_TRAINING: {pb.SEED_STAGE_GERMINATED: pb.SEED_STAGE_TRAINING},
    pb.SEED_OP_START_BLENDING: {pb.SEED_STAGE_TRAINING: pb.SEED_STAGE_BLENDING},
    pb.SEED_OP_ADVANCE: {
        pb.SEED_STAGE_BLENDING: pb.SEED_STAGE_SHADOWING,
        pb.SEED_STAGE_SHADOWING: pb.SEED_STAGE_PROBATIONARY,
    },
    pb.SEED_OP_FOSSILIZE: {pb.SEED_STAGE_PROBATIONARY: pb.SEED_STAGE_FOSSILIZED},
    pb.SEED_OP_CULL: {
        stage: pb.SEED_STAGE_CULLED
        for stage in (
            pb.SEED_STAGE_GERMINATED,
            pb.SEED_STAGE_TRAINING,
            pb.SEED_STAGE_BLENDING,
            pb.SEED_STAGE_SHADOWING,
            pb.SEED_STAGE_PROBATIONARY,
        )
    },
}

ACTIVE = frozenset(TRANSITIONS[pb.SEED_OP_CULL])
"""Stages a seed may be culled from: it exists and is not yet permanent."""
HAS_MODULE = ACTIVE | {pb.SEED_STAGE_FOSSILIZED}
ISOLATED = frozenset({pb.SEED_STAGE_TRAINING})
"""The seed learns, but the host's forward and gradients are exactly as without it."""
BLENDED = frozenset(
    {
        pb.SEED_STAGE_BLENDING,
        pb.SEED_STAGE_SHADOWING,
        pb.SEED_STAGE_PROBATIONARY,
        pb.SEED_STAGE_FOSSILIZED,
    }
)
"""The seed's output is part of the host's forward, weighted by alpha."""
TRAINABLE = ISOLATED | (BLENDED - {pb.SEED_STAGE_FOSSILIZED})


def next_stage(operation: int, stage: int) -> pb.SeedLifecycleStage.ValueType | None:
    """The stage ``operation`` moves a seed in ``stage`` to, or None if it does not apply."""
    return TRANSITIONS.get(operation, {}).get(stage)


@dataclass(frozen=True, slots=True)
class GateSettings:
    """Thresholds of the gates (steps are optimiser steps)."""

    min_training_steps: int = 20
    min_shadowing_steps: int = 20
    min_probation_steps: int = 20
    max_seed_gradient_norm: float = 100.0
    loss_regression_tolerance: float = 0.05  # relative to the loss when blending began
    max_seed_parameter_fraction: float = 0.5  # all seeds' parameters / host parameters
    max_live_seeds: int = 8


@dataclass(frozen=True, slots=True)
class GateInputs:
    """What the gates look at, gathered by the executor for one seed and command."""

    steps_in_stage: int = 0
    alpha: float = 0.0
    seed_gradient_norm: float = math.nan  # nan: the seed has not had a gradient yet
    loss_ema: float = math.nan
    blend_baseline_loss: float = math.nan
    isolation_violations: int = 0
    added_parameters: int = 0  # parameters this command would add
    seed_parameters: int = 0  # parameters every live seed already holds
    host_parameters: int = 1
    live_seeds: int = 0


@dataclass(frozen=True, slots=True)
class GateResult:
    passed: bool
    gate: str = ""  # which gate refused: gradient_health, stability, system_impact
    detail: str = ""


PASS = GateResult(True)


def _gradient_health(inputs: GateInputs, settings: GateSettings) -> GateResult:
    norm = inputs.seed_gradient_norm
    if not math.isfinite(norm):
        return GateResult(False, "gradient_health", f"seed gradient norm is {norm}")
    if norm > settings.max_seed_gradient_norm:
        return GateResult(
            False,
            "gradient_health",
            f"seed gradient norm {norm:.3g} > {settings.max_seed_gradient_norm:g}",
        )
    return PASS


def _stability(inputs: GateInputs, min_steps: int, settings: GateSettings) -> GateResult:
    if inputs.steps_in_stage < min_steps:
        return GateResult(
            False, "stability", f"{inputs.steps_in_stage} of {min_steps} steps in stage"
        )
    if inputs.isolation_violations:
        return GateResult(False, "stability", f"{inputs.isolation_violations} isolation violations")
    baseline, loss = inputs.blend_baseline_loss, inputs.loss_ema
    limit = baseline * (1.0 + settings.loss_regression_tolerance)
    if math.isfinite(baseline) and not loss <= limit:
        return GateResult(
            False, "stability", f"loss {loss:.4g} regressed past {limit:.4g} since blending"
        )
    return PASS


def _system_impact(inputs: GateInputs, settings: GateSettings) -> GateResult:
    if inputs.live_seeds >= settings.max_live_seeds:
        limit = settings.max_live_seeds
        return GateResult(False, "system_impact", f"{inputs.live_seeds} live seeds (max {limit})")
    total = inputs.seed_parameters + inputs.added_parameters
    budget = settings.max_seed_parameter_fraction * inputs.host_parameters
    if total > budget:
        return GateResult(
            False, "system_impact", f"seed parameters {total:,} > budget {budget:,.0f}"
        )
    return PASS


def check_gate(
    operation: int, stage: int, inputs: GateInputs, settings: GateSettings
) -> GateResult:
    """Whether ``operation`` may move a seed out of ``stage`` now.

    The caller has checked that the transition exists (``next_stage``).
    """
    if operation == pb.SEED_OP_GERMINATE:
        return _system_impact(inputs, settings)
    if operation == pb.SEED_OP_START_BLENDING:
        health = _gradient_health(inputs, settings)
        if not health.passed:
            return health
        return _stability(inputs, settings.min_training_steps, settings)
    if operation == pb.SEED_OP_ADVANCE and stage == pb.SEED_STAGE_BLENDING:
        if inputs.alpha < 1.0:
            return GateResult(False, "stability", f"blending incomplete (alpha {inputs.alpha:.2f})")
        return _gradient_health(inputs, settings)
    if operation == pb.SEED_OP_ADVANCE:
        return _stability(inputs, settings.min_shadowing_steps, settings)
    if operation == pb.SEED_OP_FOSSILIZE:
        health = _gradient_health(inputs, settings)
        if not health.passed:
            return health
        return _stability(inputs, settings.min_probation_steps, settings)
    return PASS  # START_TRAINING and CULL: always safe
