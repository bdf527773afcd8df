"""Kasmina: commands verified before anything changes; refusals; gradient isolation;
the cull-embargo-reset cycle; optimiser and pause commands."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import effective_priority
from oona.keys import Signer
from tamiyo_bus.kasmina.executor import Kasmina
from tamiyo_bus.kasmina.settings import KasminaSettings
from tamiyo_bus.kasmina.site import SeedSite
from tamiyo_bus.kasmina.telemetry import to_packet
from tamiyo_bus.security.commands import CommandSigner, stamp_command
from tests.integration.helpers import Assembly, assemble, no_op, seed_command

S = pb.SeedLifecycleStage
SEED = "block0.s0"


@pytest.fixture
def parts(tmp_path: Path, signer: Signer) -> Assembly:
    return assemble(tmp_path, signer, kasmina_settings=KasminaSettings(embargo_steps=3))


def signed(command: pb.AdaptationCommand, signer: Signer) -> pb.AdaptationCommand:
    stamp_command(command, "test")
    CommandSigner(signer).sign(command)
    return command


def state_of(kasmina: Kasmina) -> bytes:
    """Everything a command could change, as comparable bytes."""
    packet = pb.SystemStatePacket()
    kasmina.fill_seed_states(packet)
    extra = (kasmina.paused_until_step, kasmina.learning_rates.learning_rate)
    return packet.SerializeToString(deterministic=True) + repr(extra).encode()


def train_once(parts: Assembly, step: int) -> float:
    """One real step of the host, with Kasmina's per-step calls."""
    x, y = parts.data.train_x[:32], parts.data.train_y[:32]
    loss = F.cross_entropy(parts.model(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    parts.kasmina.step_seeds()
    parts.kasmina.advance_alpha()
    parts.kasmina.finalize_step(step, float(loss.detach()))
    return float(loss.detach())


# --------------------------------------------------------------- verification


def test_forged_tampered_replayed_and_stale_commands_change_nothing(
    parts: Assembly, signer: Signer
) -> None:
    kasmina = parts.kasmina
    germinate = seed_command(SEED, pb.SEED_OP_GERMINATE, blueprint_id="mlp-res-8")
    before = state_of(kasmina)

    forged = signed(pb.AdaptationCommand(), Signer.generate())
    forged.CopyFrom(signed(germinate, Signer.generate()))
    tampered = signed(seed_command(SEED, pb.SEED_OP_GERMINATE, blueprint_id="mlp-res-8"), signer)
    tampered.seed.blueprint_id = "mlp-res-64"
    unsigned = seed_command(SEED, pb.SEED_OP_GERMINATE, blueprint_id="mlp-res-8")
    stamp_command(unsigned, "test")
    stale = seed_command(SEED, pb.SEED_OP_GERMINATE, blueprint_id="mlp-res-8")
    stamp_command(stale, "test")
    stale.issued_at_ns -= 120 * 10**9
    CommandSigner(signer).sign(stale)

    outcomes = [kasmina.apply_command(c).outcome for c in (forged, tampered, unsigned, stale)]
    assert outcomes == ["unknown_key", "invalid_signature", "missing_signature", "stale"]
    assert state_of(kasmina) == before
    assert kasmina.stats.verified == 0
    assert kasmina.history == []

    genuine = signed(germinate, signer)
    first = kasmina.apply_command(genuine)
    assert (first.verified, first.applied) == (True, True)
    assert kasmina.seeds[SEED].stage == S.SEED_STAGE_GERMINATED
    after_first = state_of(kasmina)
    replay = kasmina.apply_command(genuine)
    assert (replay.verified, replay.outcome) == (False, "replay")
    assert state_of(kasmina) == after_first
    assert dict(kasmina.stats.rejected) == {
        "unknown_key": 1, "invalid_signature": 1, "missing_signature": 1, "stale": 1, "replay": 1,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("command", "outcome"),
    [
        (seed_command(SEED, pb.SEED_OP_GERMINATE, blueprint_id="mlp-res-512"), "quarantined"),
        (seed_command(SEED, pb.SEED_OP_GERMINATE, blueprint_id="conv-res-8"), "incompatible"),
        (seed_command(SEED, pb.SEED_OP_GERMINATE, blueprint_id="no-such"), "unknown_blueprint"),
        (
            seed_command(
                SEED, pb.SEED_OP_GERMINATE, blueprint_id="mlp-res-8", parameters={"init_scale": 0.5}
            ),
            "invalid",
        ),
        (
            seed_command(
                SEED, pb.SEED_OP_GERMINATE, blueprint_id="mlp-res-8", parameters={"dropout": 0.1}
            ),
            "invalid",
        ),
        (seed_command(SEED, pb.SEED_OP_START_BLENDING), "wrong_stage"),
        (seed_command("block9.s0", pb.SEED_OP_CULL), "unknown_seed"),
    ],
)
def test_verified_but_disallowed_commands_are_refused_and_change_nothing(
    parts: Assembly, signer: Signer, command: pb.AdaptationCommand, outcome: str
) -> None:
    before = state_of(parts.kasmina)
    result = parts.kasmina.apply_command(signed(command, signer))
    assert (result.verified, result.applied, result.outcome) == (True, False, outcome)
    assert state_of(parts.kasmina) == before


def test_a_command_for_another_run_is_refused(parts: Assembly, signer: Signer) -> None:
    command = seed_command(SEED, pb.SEED_OP_GERMINATE, blueprint_id="mlp-res-8")
    command.training_run_id = "someone-else"
    assert parts.kasmina.apply_command(signed(command, signer)).outcome == "wrong_run"


def test_germinating_past_the_parameter_budget_is_refused(parts: Assembly, signer: Signer) -> None:
    command = seed_command(SEED, pb.SEED_OP_GERMINATE, blueprint_id="mlp-res-64")
    result = parts.kasmina.apply_command(signed(command, signer))
    assert result.outcome == "gate_system_impact"  # 4,192 seed parameters > half of 3,530


# ------------------------------------------------------------------ isolation


def _host_grads(parts: Assembly) -> list[torch.Tensor]:
    for p in parts.model.parameters():
        p.grad = None
    x, y = parts.data.train_x[:64], parts.data.train_y[:64]
    logits = parts.model(x)
    F.cross_entropy(logits, y).backward()  # type: ignore[no-untyped-call]
    return [p.grad.clone() for p in parts.model.parameters() if p.grad is not None]


def _grow_training_seed(parts: Assembly, signer: Signer, seed_id: str) -> None:
    kasmina = parts.kasmina
    for op, extra in ((pb.SEED_OP_GERMINATE, {"blueprint_id": "mlp-res-8",
                                              "parameters": {"init_scale": 0.05}}),
                      (pb.SEED_OP_START_TRAINING, {})):  # fmt: skip
        assert kasmina.apply_command(signed(seed_command(seed_id, op, **extra), signer)).applied


def test_host_gradients_are_identical_with_and_without_a_training_seed(
    parts: Assembly, signer: Signer
) -> None:
    without = _host_grads(parts)
    _grow_training_seed(parts, signer, SEED)
    seed = parts.kasmina.seeds[SEED]
    assert seed.module is not None
    for p in seed.module.parameters():
        p.grad = None
    with_seed = _host_grads(parts)
    assert len(with_seed) == len(without)
    assert all(torch.equal(a, b) for a, b in zip(with_seed, without, strict=True))
    seed_grads = [p.grad for p in seed.module.parameters()]
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in seed_grads)
    parts.kasmina.finalize_step(0, 1.0)
    assert seed.isolation_checks == 1
    assert seed.isolation_violations == 0


def test_a_seed_that_leaks_gradient_into_the_host_is_caught_and_culled(
    parts: Assembly, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _grow_training_seed(parts, signer, SEED)
    monkeypatch.setattr(SeedSite, "isolate", staticmethod(lambda x: x))  # no detach
    train_once(parts, 0)
    assert parts.kasmina.stats.isolation_violations == 1
    assert parts.kasmina.seeds[SEED].stage == S.SEED_STAGE_CULLED
    assert parts.kasmina.history[-1].reason == "isolation_violation"
    assert parts.kasmina.step_metrics()["isolation_violations"] == 1.0
    # the step's telemetry carries it as a HIGH event: it travels the emergency lane
    packet = to_packet(parts.kasmina.outbox.drain()[-1], run_id="test-run")
    assert effective_priority(packet) == pb.MESSAGE_PRIORITY_HIGH
    names = [e.name for e in packet.events]
    assert names[-2:] == ["seed_transition", "isolation_violation"]  # after germinate, train
    assert packet.events[-1].attributes["seed"] == SEED


def test_a_seed_with_non_finite_gradients_is_culled(parts: Assembly, signer: Signer) -> None:
    _grow_training_seed(parts, signer, SEED)
    train_once(parts, 0)
    seed = parts.kasmina.seeds[SEED]
    assert seed.module is not None
    x, y = parts.data.train_x[:32], parts.data.train_y[:32]
    F.cross_entropy(parts.model(x), y).backward()  # type: ignore[no-untyped-call]
    next(iter(seed.module.parameters())).grad.fill_(math.nan)  # type: ignore[union-attr]
    parts.kasmina.step_seeds()
    assert seed.stage == S.SEED_STAGE_CULLED
    assert parts.kasmina.history[-1].reason == "gradient_health"


# ------------------------------------------------------------ lifecycle timing


def test_cull_then_embargo_then_reset_to_dormant(parts: Assembly, signer: Signer) -> None:
    kasmina = parts.kasmina
    _grow_training_seed(parts, signer, SEED)
    assert kasmina.apply_command(signed(seed_command(SEED, pb.SEED_OP_CULL), signer)).applied
    stages = []
    for step in range(6):
        train_once(parts, step)
        stages.append(kasmina.seeds[SEED].stage)
    assert stages == [
        S.SEED_STAGE_CULLED,  # visible in one packet
        S.SEED_STAGE_EMBARGOED,
        S.SEED_STAGE_EMBARGOED,
        S.SEED_STAGE_EMBARGOED,
        S.SEED_STAGE_RESETTING,
        S.SEED_STAGE_DORMANT,
    ]
    assert kasmina.seeds[SEED].module is None
    assert not kasmina.live_seeds


def test_optimizer_command_goes_through_the_lr_controller(parts: Assembly, signer: Signer) -> None:
    _grow_training_seed(parts, signer, SEED)
    seed = parts.kasmina.seeds[SEED]
    assert seed.optimizer is not None
    before = parts.lr.learning_rate
    command = pb.AdaptationCommand(
        version=1, command_type=pb.COMMAND_TYPE_OPTIMIZER, training_run_id="test-run"
    )
    command.optimizer.learning_rate_scale = 0.5
    assert parts.kasmina.apply_command(signed(command, signer)).applied
    assert parts.lr.learning_rate == pytest.approx(before * 0.5)
    assert seed.optimizer.param_groups[0]["lr"] == pytest.approx(before * 0.5)
    command = pb.AdaptationCommand(
        version=1, command_type=pb.COMMAND_TYPE_OPTIMIZER, training_run_id="test-run"
    )
    command.optimizer.learning_rate_scale = -1.0
    assert parts.kasmina.apply_command(signed(command, signer)).outcome == "invalid"


def test_pause_freezes_blending_and_germination(parts: Assembly, signer: Signer) -> None:
    kasmina = parts.kasmina
    pause = pb.AdaptationCommand(
        version=1, command_type=pb.COMMAND_TYPE_PAUSE, training_run_id="test-run"
    )
    assert kasmina.apply_command(signed(pause, signer)).applied
    germinate = seed_command(SEED, pb.SEED_OP_GERMINATE, blueprint_id="mlp-res-8")
    assert kasmina.apply_command(signed(germinate, signer)).outcome == "paused"
    assert kasmina.apply_command(signed(no_op(), signer)).applied
