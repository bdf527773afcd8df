"""Crashes on the real server: the Tamiyo process SIGKILLed mid-run and restarted, and
the server itself restarted mid-run with append-only persistence. No report is lost,
none is stored twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from consumers.simic import ReportStore, SimicIntake
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.connection import open_redis
from oona.keyfiles import ENV_SIGNING_KEY, ENV_TRUSTED_KEYS
from oona.keys import Keyring, Signer
from oona.server import EmbeddedServer
from oona.settings import OonaSettings
from tamiyo_bus.reports.book import ReportState, RetryPolicy
from tamiyo_bus.reports.delivery import DeliverySettings, ReportDelivery
from tamiyo_bus.reports.records import Kind
from tamiyo_bus.reports.reporter import FieldReporter
from tamiyo_bus.reports.wal import WalSettings, scan
from tests.reports.drill import DrillPlan

from .conftest import Background
from .helpers import async_wait_until, command, fast_settings, state

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _written(wal_dir: Path) -> list[str]:
    """Report ids of the REPORT records in the log, one per record."""
    if not wal_dir.exists():
        return []
    return [
        pb.FieldReport.FromString(r.body).report_id
        for r in scan(wal_dir, WalSettings()).records
        if r.kind == Kind.REPORT
    ]


def _drill_env(signer: Signer) -> dict[str, str]:
    private = signer.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        ENV_SIGNING_KEY: private.hex(),
        ENV_TRUSTED_KEYS: f"simic={public.hex()}",  # the acks' signer
    }


async def test_tamiyo_killed_mid_run_then_restarted_delivers_every_report_once(
    tmp_path: Path, settings: OonaSettings, signer: Signer, keyring: Keyring,
    simic_bus: Bus, store: ReportStore, background: Background,
) -> None:  # fmt: skip
    wal_dir = tmp_path / "wal"
    plan = DrillPlan(epochs=20, decisions_per_epoch=10)
    args = [
        sys.executable, "-m", "tests.reports.drill", "--wal-dir", str(wal_dir),
        "--redis-url", settings.redis_url, "--prefix", settings.key_prefix,
        "--epochs", str(plan.epochs), "--decisions-per-epoch", str(plan.decisions_per_epoch),
        "--window-epochs", "2", "--step-delay-ms", "5",
    ]  # fmt: skip
    env = _drill_env(signer)
    background.start("simic", SimicIntake(simic_bus, keyring, store).run)

    victim = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        await async_wait_until(lambda: len(_written(wal_dir)) >= 60 and store.count() > 0)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    written = set(_written(wal_dir))
    assert 60 <= len(written) < len(plan.report_ids())  # killed mid-run

    rerun = await asyncio.create_subprocess_exec(*args, cwd=ROOT, env=env, stdout=subprocess.PIPE)
    out, _ = await asyncio.wait_for(rerun.communicate(), 30)
    assert rerun.returncode == 0
    summary = orjson.loads(out.splitlines()[-1])
    assert (summary["reports"], summary["refused"]) == (len(plan.report_ids()), 0)
    await background.stop("simic")
    await SimicIntake(simic_bus, keyring, store).drain()

    stored = set(store.report_ids())
    assert written <= stored  # every report written before the kill reached Simic
    assert stored == set(plan.report_ids())  # and every later one
    assert store.count() == len(plan.report_ids())  # one row each: stored exactly once
    per_id = Counter(_written(wal_dir))
    assert set(per_id.values()) == {1}  # ids stable: no report synthesised twice


async def test_server_restarted_mid_run_loses_no_report(
    tmp_path: Path, signer: Signer, keyring: Keyring, background: Background
) -> None:
    server = EmbeddedServer(data_dir=tmp_path / "aof", appendonly=True).start()
    settings = OonaSettings(
        redis_url=server.url, read_block_ms=20, io_timeout_ms=10_000.0,
        reconnect_backoff_base_ms=10.0, reconnect_backoff_max_ms=100.0,
        retry_backoff_base_ms=5.0, retry_backoff_max_ms=40.0,
    )  # fmt: skip
    tamiyo = Bus(open_redis(server.url, settings), settings, signer, source="tamiyo")
    simic = Bus(open_redis(server.url, settings), settings, signer, source="simic")
    store = ReportStore(tmp_path / "simic.sqlite3")
    retry = RetryPolicy(ack_timeout_ms=300.0, retry_backoff_max_ms=1_000.0, max_attempts=1_000)
    reporter = FieldReporter(fast_settings(tmp_path / "wal", retry=retry), metrics=tamiyo.metrics)
    reporter.start()
    delivery = DeliverySettings(idle_poll_ms=20.0, bus_failure_backoff_base_ms=10.0)
    try:
        background.start("tamiyo", ReportDelivery(reporter, tamiyo, keyring, delivery).run)
        background.start("simic", SimicIntake(simic, keyring, store).run)
        for i in range(30):
            reporter.on_command(command(i), state(0))
        reporter.on_epoch_end(state(2))
        await async_wait_until(lambda: store.count() >= 10)

        server.stop(kill=True)
        for i in range(30, 60):  # decided while the server is down
            reporter.on_command(command(i), state(2))
        reporter.on_epoch_end(state(4))
        await asyncio.to_thread(reporter.flush)
        await async_wait_until(lambda: tamiyo.metrics.count("io_failures") >= 1)
        server.start()

        ids = [e.report_id for e in reporter.book.entries()]
        assert len(ids) == 60
        await async_wait_until(
            lambda: all(reporter.book.state_of(i) is ReportState.ACKED for i in ids), 30
        )
        assert sorted(store.report_ids()) == sorted(ids)
        assert store.count() == 60
    finally:
        await background.stop_all()
        reporter.close()
        store.close()
        await tamiyo.close()
        await simic.close()
        server.cleanup()
