"""A short real training run with a (scripted, signing) controller on the step path:
the cadence of evaluate_step, verification, alpha and finalize_step."""

from __future__ import annotations

import itertools
from pathlib import Path

from leyline_pb import leyline_pb2 as pb
from oona.keys import Signer
from tamiyo_bus.kasmina.settings import KasminaSettings
from tests.integration.helpers import (
    ScriptedController,
    assemble,
    lifecycle_rule,
    trainer,
)
from weatherlight.demo.recorder import RunRecorder

S = pb.SeedLifecycleStage
STEPS = 140


def test_every_step_decides_verifies_applies_and_finalizes(tmp_path: Path, signer: Signer) -> None:
    parts = assemble(tmp_path, signer, kasmina_settings=KasminaSettings(telemetry_every_steps=1))
    controller = ScriptedController(signer, lifecycle_rule("block1.s0", "mlp-res-16"))
    recorder = RunRecorder()
    trainer(parts, controller, max_steps=STEPS, observers=(recorder,)).run()
    kasmina = parts.kasmina

    # one evaluate_step per optimiser step, in order, each with the live seed states (and,
    # with telemetry_every_steps=1, a telemetry record per step)
    assert [p.global_step for p in controller.packets] == list(range(STEPS))
    assert all(len(p.seed_states) == 2 for p in controller.packets)
    assert all(p.training_metrics["layer/block0/gradient_norm"] > 0 for p in controller.packets)
    # every command that can change anything verified and accepted, every NO_OP taken
    # without verification (it changes nothing); finalize_step every step
    acting = [r for r in recorder.steps if r.command.command_type != pb.COMMAND_TYPE_NO_OP]
    assert acting and kasmina.stats.verified == len(acting)
    assert not kasmina.stats.rejected
    assert all(r.result is not None and r.result.verified for r in acting)
    no_ops = [r for r in recorder.steps if r.command.command_type == pb.COMMAND_TYPE_NO_OP]
    assert all(r.result is not None and r.result.applied for r in no_ops)
    assert kasmina.stats.finalized == STEPS
    telemetry = kasmina.outbox.drain()
    assert [t.step for t in telemetry] == list(range(STEPS))
    assert kasmina.outbox.dropped == 0

    # the seed went through its whole lifecycle, in order
    stages = [e.to_stage for e in kasmina.history]
    assert stages == [
        S.SEED_STAGE_GERMINATED,
        S.SEED_STAGE_TRAINING,
        S.SEED_STAGE_BLENDING,
        S.SEED_STAGE_SHADOWING,
        S.SEED_STAGE_PROBATIONARY,
        S.SEED_STAGE_FOSSILIZED,
    ]
    # alpha is monotone while blending, reaches 1, and stays there
    alphas = [
        seed.alpha
        for t in telemetry
        for seed in t.seeds
        if seed.seed_id == "block1.s0" and seed.stage == S.SEED_STAGE_BLENDING
    ]
    assert len(alphas) >= 10
    assert all(b >= a for a, b in itertools.pairwise(alphas))
    assert alphas[-1] == 1.0
    # refusals happened only where a gate said "not yet"
    assert set(kasmina.stats.refused) <= {"gate_stability"}
    assert recorder.epochs and recorder.epochs[-1].live_seeds == 1


def test_decision_cadence_asks_every_nth_step_but_finalizes_every_step(
    tmp_path: Path, signer: Signer
) -> None:
    parts = assemble(tmp_path, signer)
    controller = ScriptedController(signer, lifecycle_rule("block0.s0", "lowrank-4", 8), every=4)
    recorder = RunRecorder()
    trainer(parts, controller, max_steps=60, observers=(recorder,)).run()
    assert [p.global_step for p in controller.packets] == list(range(0, 60, 4))
    assert parts.kasmina.stats.finalized == 60
    assert [r.command is not None for r in recorder.steps] == [k % 4 == 0 for k in range(60)]
    blending = [
        s.alpha
        for t in parts.kasmina.outbox.drain()
        for s in t.seeds
        if s.stage == S.SEED_STAGE_BLENDING
    ]
    assert blending  # alpha advanced on the steps in between as well
    assert len(set(blending)) == len(blending)


def test_quiet_steps_send_telemetry_only_every_nth_step(tmp_path: Path, signer: Signer) -> None:
    """A step's record goes out every ``telemetry_every_steps`` steps, and on every step
    with a verified command or a lifecycle change; the quiet steps cost next to nothing."""
    parts = assemble(tmp_path, signer, kasmina_settings=KasminaSettings(telemetry_every_steps=7))
    controller = ScriptedController(signer, lifecycle_rule("block1.s0", "mlp-res-16"))
    recorder = RunRecorder()
    trainer(parts, controller, max_steps=STEPS, observers=(recorder,)).run()
    kasmina = parts.kasmina
    expected = (
        {step for step in range(STEPS) if step % 7 == 0}
        | {r.step for r in recorder.steps if r.result is not None and r.result.verified}
        | {e.step for e in kasmina.history}
    )
    sent = [t.step for t in kasmina.outbox.drain()]
    assert sent == sorted(expected)
    assert len(sent) < STEPS and kasmina.stats.finalized == STEPS
