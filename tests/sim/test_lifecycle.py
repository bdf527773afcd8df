"""The simulator applies commands by Kasmina's rules: refusals, gates and their delays,
scheduled stages, and the effects of the non-seed commands."""

from __future__ import annotations

import numpy as np
import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.kasmina.lifecycle import GateSettings
from tamiyo_bus.sim import VectorSim
from tests.sim.helpers import (
    NO_OP,
    QUIET,
    deficit_layer,
    germinate,
    seed_command,
    start_blending,
    walk,
)

S = pb.SeedLifecycleStage
GATES = GateSettings()
K = QUIET.decision_every_steps


def _fitting_blueprint(sim: VectorSim, layer: int) -> str:
    return "mlp-res-16" if sim.host.layer_kinds[layer] == "linear" else "conv-res-8"


def test_a_seed_walks_germinate_to_fossilize_with_the_gates_delays() -> None:
    sim = VectorSim(QUIET, seed=3)
    sim.reset()
    layer = deficit_layer(sim)
    seed_id = f"layer{layer}.s0"
    plan = [
        germinate(seed_id, _fitting_blueprint(sim, layer)),
        seed_command(seed_id, pb.SEED_OP_START_TRAINING),
        start_blending(seed_id, alpha_steps=16),
        seed_command(seed_id, pb.SEED_OP_ADVANCE),
        seed_command(seed_id, pb.SEED_OP_ADVANCE),
        seed_command(seed_id, pb.SEED_OP_FOSSILIZE),
    ]
    applied_at: list[int] = []
    refusals: list[str] = []
    while plan:
        step = sim.step_index
        result = sim.step([plan[0]]).results[0]
        if result.applied:
            applied_at.append(step)
            plan.pop(0)
        else:
            refusals.append(result.outcome)
        assert sim.step_index < 400, "the lifecycle stalled"

    stages = [e.to_stage for e in sim.executor.history[0]]
    assert stages == [
        S.SEED_STAGE_GERMINATED,
        S.SEED_STAGE_TRAINING,
        S.SEED_STAGE_BLENDING,
        S.SEED_STAGE_SHADOWING,
        S.SEED_STAGE_PROBATIONARY,
        S.SEED_STAGE_FOSSILIZED,
    ]
    germinated, training, blending, shadowing, probation, fossilized = applied_at
    assert training == germinated + K  # no gate
    assert GATES.min_training_steps <= blending - training < GATES.min_training_steps + K
    assert 16 <= shadowing - blending < 16 + K  # alpha reaches 1 after its ramp
    assert GATES.min_shadowing_steps <= probation - shadowing < GATES.min_shadowing_steps + K
    assert GATES.min_probation_steps <= fossilized - probation < GATES.min_probation_steps + K
    assert set(refusals) == {"gate_stability"}
    state = next(s for s in sim.step([NO_OP]).packets[0].seed_states if s.seed_id == seed_id)
    assert state.stage == S.SEED_STAGE_FOSSILIZED and state.alpha == 1.0
    assert sim.executor.kasmina_stats(0).applied == 6 + 1  # and the NO_OP


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (start_blending("layer3.s0"), "wrong_stage"),
        (seed_command("layer3.s0", pb.SEED_OP_FOSSILIZE), "wrong_stage"),
        (germinate("layer3.s0", "conv-res-8"), "incompatible"),
        (germinate("layer0.s0", "mlp-res-16"), "incompatible"),
        (germinate("layer3.s0", "mlp-res-512"), "quarantined"),
        (germinate("layer3.s0", "no-such-blueprint"), "unknown_blueprint"),
        (germinate("layer9.s0", "mlp-res-16"), "unknown_seed"),
        (pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_OPTIMIZER), "invalid"),
        (pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_UNKNOWN), "invalid"),
        (
            pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_NO_OP, training_run_id="other"),
            "wrong_run",
        ),
    ],
)
def test_an_illegal_command_is_refused_counted_and_changes_nothing(
    command: pb.AdaptationCommand, reason: str
) -> None:
    sim = VectorSim(QUIET, seed=1)
    sim.reset()
    stages = sim.state.stage.copy()
    result = sim.step([command]).results[0]
    assert (result.verified, result.applied, result.outcome) == (True, False, reason)
    assert sim.executor.kasmina_stats(0).refused == {reason: 1}
    assert np.array_equal(sim.state.stage, stages)
    assert sim.executor.history[0] == []


def test_a_germination_parameter_outside_the_blueprint_bounds_is_invalid() -> None:
    sim = VectorSim(QUIET, seed=1)
    sim.reset()
    command = germinate("layer3.s0", "mlp-res-16")
    command.seed.parameters["lr_ratio"] = 50.0
    assert walk(sim, [command]) == ["invalid"]


def test_blending_too_early_is_refused_by_the_stability_gate() -> None:
    sim = VectorSim(QUIET, seed=1)
    sim.reset()
    outcomes = walk(
        sim,
        [
            germinate("layer3.s0", "mlp-res-16"),
            seed_command("layer3.s0", pb.SEED_OP_START_TRAINING),
            start_blending("layer3.s0"),
        ],
    )
    assert outcomes == ["applied", "applied", "gate_stability"]


def test_a_culled_seed_is_embargoed_then_its_slot_is_dormant_again() -> None:
    sim = VectorSim(QUIET, seed=1)
    sim.reset()
    walk(sim, [germinate("layer3.s0", "mlp-res-16")])
    culled_at = sim.step_index
    walk(sim, [seed_command("layer3.s0", pb.SEED_OP_CULL)])
    for _ in range(QUIET.kasmina.embargo_steps // K + 2):
        sim.step([NO_OP])
    moves = [(e.step, e.to_stage, e.reason) for e in sim.executor.history[0]][1:]
    embargo = QUIET.kasmina.embargo_steps
    assert moves == [
        (culled_at, S.SEED_STAGE_CULLED, "cull"),
        (culled_at + 1, S.SEED_STAGE_EMBARGOED, "embargo"),
        (culled_at + 1 + embargo, S.SEED_STAGE_RESETTING, "embargo_over"),
        (culled_at + 2 + embargo, S.SEED_STAGE_DORMANT, "reset"),
    ]


def test_pause_refuses_germination_and_freezes_alpha_for_its_steps() -> None:
    sim = VectorSim(QUIET, seed=1)
    sim.reset()
    walk(
        sim,
        [
            germinate("layer3.s0", "mlp-res-16"),
            seed_command("layer3.s0", pb.SEED_OP_START_TRAINING),
        ],
    )
    while walk(sim, [start_blending("layer3.s0", alpha_steps=64)]) != ["applied"]:
        pass
    pause = pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_PAUSE)
    alpha_before = float(sim.state.alpha[0, sim.host.seed_index["layer3.s0"]])
    assert walk(sim, [pause, germinate("layer4.s0", "mlp-res-16")]) == ["applied", "paused"]
    assert float(sim.state.alpha[0, sim.host.seed_index["layer3.s0"]]) == alpha_before
    for _ in range(QUIET.kasmina.pause_steps // K):
        sim.step([NO_OP])
    assert walk(sim, [germinate("layer4.s0", "mlp-res-16")]) == ["applied"]
    assert float(sim.state.alpha[0, sim.host.seed_index["layer3.s0"]]) > alpha_before


def test_optimizer_scales_the_learning_rate_within_the_band() -> None:
    sim = VectorSim(QUIET, seed=1)
    sim.reset()
    double = pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_OPTIMIZER)
    double.optimizer.learning_rate_scale = 2.0
    packets = sim.step([double]).packets
    base = QUIET.lr.base_lr
    assert packets[0].training_metrics["learning_rate"] == pytest.approx(2.0 * base)
    for _ in range(5):
        packets = sim.step([double]).packets
    assert packets[0].training_metrics["learning_rate"] == pytest.approx(
        QUIET.lr.max_tamiyo_scale * base
    )


def test_circuit_breaker_is_counted_and_no_op_does_nothing() -> None:
    sim = VectorSim(QUIET, seed=1)
    sim.reset()
    breaker = pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_CIRCUIT_BREAKER)
    assert walk(sim, [breaker, NO_OP]) == ["applied", "applied"]
    stats = sim.executor.kasmina_stats(0)
    assert stats.breaker_commands == 1 and stats.transitions == 0


def test_emergency_culls_every_active_seed_and_rollback_spares_training_ones() -> None:
    sim = VectorSim(QUIET, seed=1)
    sim.reset()
    walk(
        sim,
        [
            germinate("layer3.s0", "mlp-res-16"),
            germinate("layer4.s0", "mlp-res-8"),
            seed_command("layer3.s0", pb.SEED_OP_START_TRAINING),
        ],
    )
    rollback = pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_ROLLBACK)
    assert walk(sim, [rollback]) == ["applied"]
    rolled_back = {e.seed_id for e in sim.executor.history[0] if e.reason == "rollback"}
    assert rolled_back == {"layer4.s0"}
    emergency = pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_EMERGENCY)
    walk(sim, [emergency])
    culled = {e.seed_id for e in sim.executor.history[0] if e.reason == "emergency"}
    assert culled == {"layer3.s0"}
