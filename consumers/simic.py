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
"""

from __future__ import annotations

import asyncio
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

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self._db.execute(_SCHEMA)

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
        """Store a report durably under its signer; False when that signer's report of
        this id was already stored (a duplicate)."""
        now = time.time_ns()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO field_reports (signer_key_id, report_id, command_id, "
                    "training_run_id, seed_id, blueprint_id, outcome, "
                    "observation_window_epochs, policy_version, issued_at_ns, "
                    "received_at_ns, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        signer_key_id, report.report_id, report.command_id,
                        report.training_run_id,
                        report.seed_id, report.blueprint_id, int(report.outcome),
                        report.observation_window_epochs, report.policy_version,
                        report.issued_at_ns, now, payload,
                    ),
                )  # fmt: skip
                new = cursor.rowcount == 1
                if not new:
                    self._db.execute(
                        "UPDATE field_reports SET deliveries = deliveries + 1 "
                        "WHERE signer_key_id = ? AND report_id = ?",
                        (signer_key_id, report.report_id),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return new

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
        await self.consumer.run(stop)

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
