"""Issue 18, finding 8: a Simic intake keeps storing while another process that shares
its SQLite store is stopped holding the store's write lock.

SQLite's lock cannot be taken from a stopped process, so an intake that finds the store
locked for longer than `store_busy_timeout_ms` stores the report in its own spill file
beside the store (durably, before it acks) and moves what it spilled into the store as
soon as the lock is free again. Here the lock holder is a real process SIGSTOPped in the
middle of a write transaction, as a stopped intake would be."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from consumers.simic import ReportStore, SimicIntake, SimicSettings
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus, Outgoing
from oona.keys import Keyring
from oona.streams import Stream
from tests.bus.helpers import wait_for

REPORTS = 40
pytestmark = pytest.mark.slow

_HOLD_THE_WRITE_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
"""


async def _acks(bus: Bus) -> int:
    return int(await bus.redis.xlen(bus.key(Stream.FIELD_REPORT_ACKS)))


async def test_an_intake_keeps_storing_while_a_stopped_process_holds_the_store_lock(
    tmp_path: Path, bus: Bus, keyring: Keyring
) -> None:
    settings = replace(SimicSettings(db_path=tmp_path / "simic" / "reports.sqlite3"),
                       consumer="simic-b", store_busy_timeout_ms=100.0)  # fmt: skip
    store = ReportStore.for_intake(settings)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_WRITE_LOCK, str(settings.db_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGSTOP)
    intake = SimicIntake(bus, keyring, store, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(intake.run(stop))
    try:
        reports = [
            Outgoing(
                pb.MESSAGE_TYPE_FIELD_REPORT,
                pb.FieldReport(report_id=f"r-{i}", training_run_id="run").SerializeToString(),
                stream=Stream.FIELD_REPORTS,
            )
            for i in range(REPORTS)
        ]
        await bus.publish_many(reports)

        async def all_acked() -> bool:
            return await _acks(bus) == REPORTS

        await wait_for(all_acked, timeout_s=15)  # stored (spilled) and acked meanwhile
        assert store.count() == 0 and store.spilled() == REPORTS

        holder.send_signal(signal.SIGCONT)
        holder.stdin.close()  # it ends, its transaction rolls back, the lock is free
        holder.wait(timeout=10)

        async def merged() -> bool:
            return store.count() == REPORTS and store.spilled() == 0

        await wait_for(merged, timeout_s=15)
        assert sorted(store.report_ids()) == sorted(f"r-{i}" for i in range(REPORTS))
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGCONT)
            holder.kill()
            holder.wait()
        stop.set()
        await task
        store.close()
