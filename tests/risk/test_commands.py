"""What each restriction level lets through, command by command."""

from __future__ import annotations

import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.risk import GatingSettings, Restriction
from tamiyo_bus.risk.gating import restrict

from .helpers import command

A, D, N, S, X, E = (
    Restriction.ALLOW,
    Restriction.DOWNGRADE,
    Restriction.NO_GERMINATION,
    Restriction.SAFE_ONLY,
    Restriction.NO_OP,
    Restriction.EMERGENCY,
)
SEED = pb.COMMAND_TYPE_SEED
PASS, HOLD, SLOW = "pass", "hold", "slow"

PROPOSALS = {
    "germinate": command(SEED, operation=pb.SEED_OP_GERMINATE, blueprint_id="bp"),
    "start_training": command(SEED, operation=pb.SEED_OP_START_TRAINING),
    "start_blending": command(SEED, operation=pb.SEED_OP_START_BLENDING, alpha_steps=100),
    "advance": command(SEED, operation=pb.SEED_OP_ADVANCE),
    "cull": command(SEED, operation=pb.SEED_OP_CULL),
    "fossilize": command(SEED, operation=pb.SEED_OP_FOSSILIZE),
    "lr_up": command(pb.COMMAND_TYPE_OPTIMIZER, lr_scale=1.5),
    "lr_down": command(pb.COMMAND_TYPE_OPTIMIZER, lr_scale=0.5),
    "pause": command(pb.COMMAND_TYPE_PAUSE),
    "no_op": command(pb.COMMAND_TYPE_NO_OP),
}


def proposal(name: str) -> pb.AdaptationCommand:
    """A fresh copy: ``restrict`` changes its command in place."""
    out = pb.AdaptationCommand()
    out.CopyFrom(PROPOSALS[name])
    return out


# proposal: outcome at ALLOW, DOWNGRADE, NO_GERMINATION, SAFE_ONLY, NO_OP
TABLE = {
    "germinate": (PASS, PASS, HOLD, HOLD, HOLD),
    "start_training": (PASS, PASS, PASS, HOLD, HOLD),
    "start_blending": (PASS, SLOW, HOLD, HOLD, HOLD),
    "advance": (PASS, HOLD, HOLD, HOLD, HOLD),
    "cull": (PASS, PASS, PASS, PASS, HOLD),
    "fossilize": (PASS, HOLD, HOLD, HOLD, HOLD),
    "lr_up": (PASS, HOLD, HOLD, HOLD, HOLD),
    "lr_down": (PASS, PASS, PASS, PASS, HOLD),
    "pause": (PASS, PASS, PASS, PASS, HOLD),
    "no_op": (PASS, PASS, PASS, PASS, PASS),
}


@pytest.mark.parametrize("name", sorted(TABLE))
@pytest.mark.parametrize("level", [A, D, N, S, X])
def test_restriction_table(name: str, level: Restriction) -> None:
    out = proposal(name)
    changed = restrict(out, level, "gradient_norm", GatingSettings())
    expected = TABLE[name][int(level)]
    assert changed == (expected != PASS)
    if expected == PASS:
        assert out == PROPOSALS[name]
    elif expected == HOLD:
        assert out.command_type == pb.COMMAND_TYPE_NO_OP
        assert out.reason == "gradient_norm"
        assert out.WhichOneof("payload") is None and not out.target_seed_id
        assert (out.command_id, out.global_step, out.policy_version, out.training_run_id) == (
            "cmd-1", 42, 7, "run-1",
        )  # fmt: skip
        replaced_type = pb.CommandType.Name(PROPOSALS[name].command_type)
        assert out.annotations["risk_replaced"].startswith(replaced_type)
    else:
        assert out.command_type == SEED
        assert out.seed.alpha_steps == 200
        assert out.annotations["risk_downgraded_alpha_steps"] == "100"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_emergency_replaces_everything(name: str) -> None:
    out = proposal(name)
    assert restrict(out, E, "loss_delta", GatingSettings())
    assert out.command_type == pb.COMMAND_TYPE_EMERGENCY
    assert out.reason == "loss_delta"


def test_slowed_ramp_is_capped() -> None:
    out = command(SEED, operation=pb.SEED_OP_START_BLENDING, alpha_steps=3000)
    assert restrict(out, D, "hook_latency", GatingSettings(max_alpha_steps=4096))
    assert out.seed.alpha_steps == 4096
