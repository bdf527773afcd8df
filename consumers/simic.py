"""Simic's field-report intake: consumer group ``simic`` on the field-reports stream.

Each report is stored in Simic's own SQLite store (WAL journal, synchronous FULL)
before the handler returns, so Oona acknowledges the stream entry only once the report
is durable. Storing is keyed by the signer's key id and the report id (INSERT OR
IGNORE): a report delivered twice, by a retry of Tamiyo's or a redelivery of Oona's,
is stored once and its `deliveries` count goes up, while a report another key signed
under the same id is stored beside it, never instead of it, so a squatter cannot
shadow a genuine report. Then a FieldReportAck goes to the acks stream, for the
duplicate as well, since the first ack may be what was lost.

A store of the earlier layout (keyed by report id alone) is migrated on open; its
rows keep an empty signer.

Several intakes may share one store. SQLite's write lock cannot be taken from a
process that holds it, and one stopped (SIGSTOP, a debugger, a VM paused) in the middle
of a write would stop every other intake with it. So an intake that waits longer than
`store_busy_timeout_ms` for the lock stores reports in a spill file of its own beside
the store (the same table, as durable, before the ack) and keeps doing so until it has
moved what it spilled into the store, which it tries every `spill_merge_interval_ms`.
Moving is INSERT OR IGNORE: a report stored in both places is kept once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.consumer import Consumer, Delivery, Subscription
from oona.errors import RejectedMessage
from oona.events import EventSink
from oona.keys import Keyring
from oona.payloads import decode
from oona.settings import DEFAULT_DATA_DIR
from oona.streams import Stream

log = logging.getLogger(__name__)
Row = tuple[object, ...]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS field_reports (
    signer_key_id TEXT NOT NULL,
    report_id TEXT NOT NULL,
    command_id TEXT NOT NULL,
    training_run_id TEXT NOT NULL,
    seed_id TEXT NOT NULL,
    blueprint_id TEXT NOT NULL,
    outcome INTEGER NOT NULL,
    observation_window_epochs INTEGER NOT NULL,
    policy_version INTEGER NOT NULL,
    issued_at_ns INTEGER NOT NULL,
    received_at_ns INTEGER NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    payload BLOB NOT NULL,
    PRIMARY KEY (signer_key_id, report_id)
)
"""
_COLUMNS = (
    "report_id, command_id, training_run_id, seed_id, blueprint_id, outcome, "
    "observation_window_epochs, policy_version, issued_at_ns, received_at_ns, deliveries, payload"
)


@dataclass(frozen=True)
class SimicSettings:
    db_path: Path = DEFAULT_DATA_DIR / "simic" / "field_reports.sqlite3"
    group: str = "simic"
    consumer: str = "simic-1"
    store_busy_timeout_ms: float = 500.0
    spill_merge_interval_ms: float = 1_000.0

    @property
    def spill_path(self) -> Path:
        """This intake's own spill file, beside the store."""
        path = self.db_path
        return path.with_name(f"{path.stem}.spill-{self.consumer}{path.suffix}")


@dataclass(frozen=True)
class StoredReport:
    report: pb.FieldReport
    signer_key_id: str
    received_at_ns: int
    deliveries: int


def decode_report(payload: bytes) -> pb.FieldReport:
    """The FieldReport in `payload`; RejectedMessage when it is not one with a report
    id (refused at once and dead-lettered, never retried)."""
    report = decode(pb.FieldReport, payload)
    if not report.report_id:
        raise RejectedMessage("malformed_payload", "field report without a report id")
    return report


class ReportStore:
    """Simic's durable store of field reports, one row per report id; thread-safe."""

    def __init__(
        self, path: Path, *, busy_timeout_ms: float = 5_000.0, spill_path: Path | None = None
    ) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = _open(path, busy_timeout_ms)
        self._migrate()
        self._db.execute(_SCHEMA)
        self.spill_path = spill_path
        self._spill: sqlite3.Connection | None = None
        self._spilling = False

    @classmethod
    def for_intake(cls, settings: SimicSettings) -> ReportStore:
        """The store as an intake uses it: a bounded wait for the lock, then its spill."""
        return cls(
            settings.db_path,
            busy_timeout_ms=settings.store_busy_timeout_ms,
            spill_path=settings.spill_path,
        )

    def _migrate(self) -> None:
        """Move a store of the earlier layout (no signer column) to the current one."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(field_reports)")}
        if not columns or "signer_key_id" in columns:
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("ALTER TABLE field_reports RENAME TO field_reports_unsigned")
        self._db.execute(_SCHEMA)
        self._db.execute(
            f"INSERT INTO field_reports (signer_key_id, {_COLUMNS}) "
            f"SELECT '', {_COLUMNS} FROM field_reports_unsigned"
        )
        self._db.execute("DROP TABLE field_reports_unsigned")
        self._db.execute("COMMIT")

    def store(self, report: pb.FieldReport, payload: bytes, signer_key_id: str) -> bool:
        """Store a report durably under its signer (in the spill file while another
        process holds the store's lock); False when that signer's report of this id was
        already stored there (a duplicate)."""
        row = _row(report, payload, signer_key_id, time.time_ns())
        with self._lock:
            if not self._spilling:
                try:
                    return _insert(self._db, row)
                except sqlite3.OperationalError as exc:
                    if self.spill_path is None or not _is_locked(exc):
                        raise
                    self._spilling = True
                    log.warning("store %s is locked by another process; spilling to %s",
                                self.path, self.spill_path)  # fmt: skip
            return _insert(self._spill_db(), row)

    def _spill_db(self) -> sqlite3.Connection:
        if self._spill is None:
            assert self.spill_path is not None
            self._spill = _open(self.spill_path, 5_000.0)
            self._spill.execute(_SCHEMA)
        return self._spill

    def spilled(self) -> int:
        """Reports waiting in this intake's spill file."""
        with self._lock:
            if self._spill is None and not (self.spill_path and self.spill_path.exists()):
                return 0
            (n,) = self._spill_db().execute("SELECT COUNT(*) FROM field_reports").fetchone()
        return int(n)

    def merge_spill(self) -> int:
        """Move spilled reports into the store; returns how many moved (0 while the
        store is still locked: then the intake keeps spilling)."""
        with self._lock:
            if self._spill is None and not (self.spill_path and self.spill_path.exists()):
                return 0
            spill = self._spill_db()
            rows = spill.execute(f"SELECT signer_key_id, {_COLUMNS} FROM field_reports").fetchall()
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _is_locked(exc):
                    return 0
                raise
            try:
                self._db.executemany(
                    f"INSERT OR IGNORE INTO field_reports (signer_key_id, {_COLUMNS}) "
                    f"VALUES ({', '.join('?' * 13)})",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            spill.executemany(
                "DELETE FROM field_reports WHERE signer_key_id = ? AND report_id = ?",
                [(row[0], row[1]) for row in rows],
            )
            self._spilling = False
        return len(rows)

    def get(self, report_id: str, *, signer_key_id: str) -> StoredReport | None:
        """The report `signer_key_id` signed under `report_id`, if stored."""
        with self._lock:
            row = self._db.execute(
                "SELECT payload, received_at_ns, deliveries FROM field_reports "
                "WHERE signer_key_id = ? AND report_id = ?",
                (signer_key_id, report_id),
            ).fetchone()
        if row is None:
            return None
        report = pb.FieldReport.FromString(row[0])
        return StoredReport(report, signer_key_id, int(row[1]), int(row[2]))

    def report_ids(self) -> list[str]:
        """Every stored report id (once per signer that stored it)."""
        with self._lock:
            rows = self._db.execute("SELECT report_id FROM field_reports").fetchall()
        return [str(r[0]) for r in rows]

    def count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM field_reports").fetchone()
        return int(n)

    def duplicates(self) -> int:
        """Deliveries beyond the first, over all reports."""
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COALESCE(SUM(deliveries - 1), 0) FROM field_reports"
            ).fetchone()
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._spill is not None:
                self._spill.close()


def _open(path: Path, busy_timeout_ms: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(
        path, timeout=busy_timeout_ms / 1000.0, check_same_thread=False, isolation_level=None
    )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _row(report: pb.FieldReport, payload: bytes, signer_key_id: str, now_ns: int) -> Row:
    return (
        signer_key_id, report.report_id, report.command_id, report.training_run_id,
        report.seed_id, report.blueprint_id, int(report.outcome),
        report.observation_window_epochs, report.policy_version, report.issued_at_ns,
        now_ns, payload,
    )  # fmt: skip


def _insert(db: sqlite3.Connection, row: Row) -> bool:
    """Insert one report in its own transaction; a duplicate counts one more delivery."""
    db.execute("BEGIN IMMEDIATE")
    try:
        cursor = db.execute(
            "INSERT OR IGNORE INTO field_reports (signer_key_id, report_id, command_id, "
            "training_run_id, seed_id, blueprint_id, outcome, observation_window_epochs, "
            "policy_version, issued_at_ns, received_at_ns, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        new = cursor.rowcount == 1
        if not new:
            db.execute(
                "UPDATE field_reports SET deliveries = deliveries + 1 "
                "WHERE signer_key_id = ? AND report_id = ?",
                (row[0], row[1]),
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return new


class SimicIntake:
    """The consumer: store, then ack on the acks stream."""

    def __init__(
        self,
        bus: Bus,
        keyring: Keyring,
        store: ReportStore,
        settings: SimicSettings | None = None,
        *,
        events: EventSink | None = None,
    ) -> None:
        self.bus = bus
        self.store = store
        self.settings = settings or SimicSettings()
        self.metrics = bus.metrics
        subscription = Subscription(
            group=self.settings.group,
            consumer=self.settings.consumer,
            streams=(Stream.FIELD_REPORTS,),
            accepted_types=frozenset({pb.MESSAGE_TYPE_FIELD_REPORT}),
        )
        self.consumer = Consumer(bus, subscription, self._handle, keyring, events=events)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop`; meanwhile move spilled reports into the store."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.consumer.run(stop))
            tasks.create_task(self._merge_spill(stop))

    async def _merge_spill(self, stop: asyncio.Event) -> None:
        interval_s = self.settings.spill_merge_interval_ms / 1000.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            moved = await asyncio.to_thread(self.store.merge_spill)
            if moved:
                self.metrics.inc("simic_reports_merged", moved)

    async def drain(self) -> int:
        return await self.consumer.drain()

    async def _handle(self, delivery: Delivery) -> None:
        envelope = delivery.envelope
        report = decode_report(envelope.payload)
        new = await asyncio.to_thread(self.store.store, report, envelope.payload, envelope.key_id)
        self.metrics.inc("simic_reports_stored" if new else "simic_reports_duplicate")
        ack = pb.FieldReportAck(
            report_id=report.report_id,
            consumer=f"{self.settings.group}/{self.settings.consumer}",
            acked_at_ns=time.time_ns(),
        )
        await self.bus.publish(
            pb.MESSAGE_TYPE_FIELD_REPORT_ACK,
            ack.SerializeToString(),
            stream=Stream.FIELD_REPORT_ACKS,
        )
