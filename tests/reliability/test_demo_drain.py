"""Issue 18, finding 5: a demo killed without warning can be drained.

The demo runs as a process and is SIGKILLed mid-run, with decisions whose windows are
still open and reports not yet acknowledged. `demo-drain RUN_DIR` reopens the run's log,
server, store and keys: every decision the log holds becomes a report that Simic stores
exactly once, and every report ends acknowledged."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.reports.records import Kind
from tamiyo_bus.reports.wal import WalSettings, scan
from tests.reliability.processes import ROOT, running, wait_until
from weatherlight.demo.layout import RunLayout
from weatherlight.settings import ENV_DATA_DIR, ENV_REDIS_URL

pytestmark = pytest.mark.slow


def _log(layout: RunLayout) -> Counter[int]:
    """Records in the run's log, by kind."""
    if not layout.field_reports.is_dir():
        return Counter()
    return Counter(r.kind for r in scan(layout.field_reports, WalSettings()).records)


def _reports(layout: RunLayout) -> list[str]:
    records = scan(layout.field_reports, WalSettings()).records
    return [pb.FieldReport.FromString(r.body).report_id for r in records if r.kind == Kind.REPORT]


def _stored(layout: RunLayout) -> list[str]:
    with sqlite3.connect(layout.simic_db) as db:
        return [row[0] for row in db.execute("SELECT report_id FROM field_reports")]


def test_a_killed_demo_is_drained_and_every_decision_reaches_simic_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV_REDIS_URL}
    env.update({ENV_DATA_DIR: str(tmp_path / "data"), "PYTHONPATH": str(ROOT),
                "OMP_NUM_THREADS": "1"})  # fmt: skip
    runs = tmp_path / "runs"
    demo = subprocess.Popen(
        [sys.executable, "-m", "weatherlight.cli", "demo", "--epochs", "400", "--out", str(runs)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: any(runs.glob("*/field_reports")), timeout_s=120, what="the run")
        layout = RunLayout(next(runs.glob("*/field_reports")).parent)
        wait_until(lambda: _log(layout)[Kind.REPORT] >= 3, timeout_s=120, what="reports written")
    finally:
        demo.send_signal(signal.SIGKILL)
        demo.wait()
    decided = _log(layout)[Kind.OPEN]
    assert decided > len(_stored(layout))  # open windows and unacked reports at the kill

    drained = subprocess.run(
        [sys.executable, "-m", "weatherlight.demo.drain", str(layout.root), "--timeout-s", "60"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert drained.returncode == 0, drained.stdout + drained.stderr
    reports = _reports(layout)
    stored = Counter(_stored(layout))
    assert len(reports) == decided  # every decision's window became one report
    assert set(stored) == set(reports) and set(stored.values()) == {1}
    assert f"{decided} field reports, {decided} acked by Simic, 0 pending" in drained.stdout
    assert not any(running(pid) for pid in _server_pids(layout))


def _server_pids(layout: RunLayout) -> list[int]:
    """Servers still serving the run's data directory (none: each went with its owner)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(layout.redis).encode() in cmdline:
                found.append(int(proc.name))
    return found
