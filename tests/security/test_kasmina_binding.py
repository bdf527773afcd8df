"""Attack class 5 of issue 17: Kasmina applies a command only to the run it names, only
within a small window of the step it was issued for, and never twice, not even after
a restart inside the freshness window."""

from __future__ import annotations

from pathlib import Path

import pytest

from leyline_pb import leyline_pb2 as pb
from oona.keys import Signer
from tamiyo_bus.kasmina.executor import Kasmina
from tamiyo_bus.security.commands import CommandSigner, stamp_command
from tests.integration.helpers import Assembly, assemble, seed_command

S = pb.SeedLifecycleStage
SEED = "block0.s0"


@pytest.fixture
def parts(tmp_path: Path, signer: Signer) -> Assembly:
    return assemble(tmp_path, signer)


def _germinate(signer: Signer, *, step: int, run: str | None = None) -> pb.AdaptationCommand:
    command = seed_command(SEED, pb.SEED_OP_GERMINATE, blueprint_id="mlp-res-8")
    command.global_step = step
    if run is not None:
        command.training_run_id = run
    stamp_command(command, "tamiyo")
    CommandSigner(signer).sign(command)
    return command


def _advance(kasmina: Kasmina, steps: int) -> None:
    for _ in range(steps):
        kasmina.finalize_step(kasmina.step, 1.0)


def test_a_command_without_a_run_id_is_applied_to_no_run(parts: Assembly, signer: Signer) -> None:
    result = parts.kasmina.apply_command(_germinate(signer, step=0, run=""))

    assert (result.applied, result.outcome) == (False, "wrong_run")
    assert parts.kasmina.seeds[SEED].stage == S.SEED_STAGE_DORMANT


def test_a_command_issued_for_another_step_is_refused(parts: Assembly, signer: Signer) -> None:
    kasmina = parts.kasmina
    _advance(kasmina, 50)
    window = kasmina.settings.command_step_window_steps

    late = kasmina.apply_command(_germinate(signer, step=0))
    early = kasmina.apply_command(_germinate(signer, step=50 + window + 1))

    assert [late.outcome, early.outcome] == ["wrong_step", "wrong_step"]
    assert kasmina.seeds[SEED].stage == S.SEED_STAGE_DORMANT
    on_time = kasmina.apply_command(_germinate(signer, step=50 - window))
    assert on_time.applied and kasmina.seeds[SEED].stage == S.SEED_STAGE_GERMINATED


def test_a_restarted_kasmina_does_not_apply_a_command_again(
    parts: Assembly, signer: Signer, tmp_path: Path
) -> None:
    command = _germinate(signer, step=0)
    assert parts.kasmina.apply_command(command).applied

    restarted = assemble(tmp_path / "restarted", signer).kasmina  # a new process, same run
    again = restarted.apply_command(command)  # replayed within the freshness window

    assert (again.verified, again.applied) == (False, False)
    assert again.outcome == "issued_before_start"
    assert restarted.seeds[SEED].stage == S.SEED_STAGE_DORMANT
