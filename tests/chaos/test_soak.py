"""The short soak in CI (bench/soak.py --short): the whole system as real processes and
every fault of the schedule once: SIGKILL of each service and of the trainer,
SIGSTOP/SIGCONT of a Simic intake, kill -9 of the server, dropped connections and added
latency through the TCP proxy, ENOSPC under the field-report log, a producer whose clock
is two minutes ahead.

It fails on any lost field report, any report stored twice or ack applied twice, a
probe applied twice that the delivery promise's exception does not cover (a unit
applied in the seconds before the server's kill -9), a rejected command that was not
forged, a trainer stall beyond its budget, a fault the system did not recover from, or
a skewed clock that raised no alert."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("soak")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAMIYO_")}
    done = subprocess.run(
        [sys.executable, "bench/soak.py", "--short", "--json", "--out", str(out / "run")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=420, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_no_field_report_is_lost_or_stored_twice(soak: dict[str, Any]) -> None:
    reports = soak["field_reports"]
    assert reports["written"] > 0
    assert reports["lost"] == 0
    assert (reports["stored_twice"], reports["acks_applied_twice"]) == (0, 0)


def test_no_unit_is_applied_twice_beyond_the_promise(soak: dict[str, Any]) -> None:
    for lane, probes in soak["probes"].items():
        assert probes["applied_again_unexcused"] == 0, lane


def test_only_the_forged_commands_are_rejected(soak: dict[str, Any]) -> None:
    commands = soak["commands"]
    assert commands["forged"] > 0
    assert commands["rejected"] == commands["forged"]
    assert set(commands["reasons"]) == {"unknown_key"}


def test_the_trainer_never_stalls_beyond_its_budget(soak: dict[str, Any]) -> None:
    trainer = soak["trainer"]
    assert trainer["incarnations"] == 2  # it was killed once and went on
    assert trainer["max_stall_s"] <= trainer["stall_budget_s"]


def test_the_system_recovers_from_every_fault(soak: dict[str, Any]) -> None:
    assert [f["fault"] for f in soak["faults"] if f["recovery_s"] is None] == []
    for lane, probes in soak["probes"].items():
        assert probes["delivered"] == probes["published"] > 0, lane


def test_the_skewed_clock_is_refused_and_raises_an_alert(soak: dict[str, Any]) -> None:
    assert set(soak["skewed_clock"]["emergency"]["reasons"]) == {"future"}
    assert any(name == "weatherlight.message_rejected (future)" for name in soak["alerts"])
