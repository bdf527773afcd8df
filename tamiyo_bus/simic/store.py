"""The learner's durable experience: decisions, field reports, run ends (SQLite).

WAL journal and synchronous FULL, as Simic's report store: a handler returns (and Oona
acks the entry) only once what it carried is on disk. Every write is keyed, so a
redelivered entry changes nothing:

- topologies by digest (a graph structure is stored once, however many segments use it);
- decisions by (run, decision step), INSERT OR IGNORE;
- field reports by (signer key id, command id), so a report signed by another key never
  stands in for the one the decision's own actor signs;
- run ends by run.

A decision moves PENDING -> COMPLETE (joined: its reward, whether it is terminal, its
successor) or EXPIRED, then COMPLETE -> USED when an update consumed it (numbered by
the update's batch, so a restart puts back what the last checkpoint did not see).
Counters of what was stored, duplicated, expired and unmatched live in the same file.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.learning.reward import Progress, RewardTerms
from tamiyo_bus.simic.join import Completed, DecisionFacts, Expiry, RunEnd

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS topologies (
        digest TEXT PRIMARY KEY, arrays BLOB NOT NULL, stored_s REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS decisions (
        training_run_id TEXT NOT NULL, decision_step INTEGER NOT NULL,
        signer_key_id TEXT NOT NULL, command_id TEXT NOT NULL, topology TEXT NOT NULL,
        policy_version INTEGER NOT NULL, acted INTEGER NOT NULL, held_out INTEGER NOT NULL,
        loss REAL, accuracy REAL, parameter_ratio REAL, step BLOB NOT NULL,
        stored_s REAL NOT NULL, state INTEGER NOT NULL DEFAULT 0,
        reward REAL, next_step INTEGER, target_return REAL, batch INTEGER,
        PRIMARY KEY (training_run_id, decision_step))""",
    "CREATE INDEX IF NOT EXISTS decisions_state ON decisions (state, training_run_id)",
    "CREATE INDEX IF NOT EXISTS decisions_command ON decisions (signer_key_id, command_id)",
    """CREATE TABLE IF NOT EXISTS reports (
        signer_key_id TEXT NOT NULL, command_id TEXT NOT NULL, report_id TEXT NOT NULL,
        payload BLOB NOT NULL, stored_s REAL NOT NULL, unmatched INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (signer_key_id, command_id))""",
    """CREATE TABLE IF NOT EXISTS run_ends (
        training_run_id TEXT PRIMARY KEY, loss REAL, accuracy REAL, parameter_ratio REAL,
        stored_s REAL NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


class DecisionState(IntEnum):
    PENDING = 0
    COMPLETE = 1
    EXPIRED = 2
    USED = 3


COUNTERS = (
    "decisions_stored",
    "decisions_duplicate",
    "reports_stored",
    "reports_duplicate",
    "joined",
    "expired_no_report",
    "expired_no_successor",
    "reports_unmatched",
)


@dataclass(frozen=True, slots=True)
class StoredDecision:
    training_run_id: str
    decision_step: int
    topology: str  # digest
    step: pb.TrajectoryStep
    held_out: bool
    reward: float  # nan unless joined
    next_step: int | None
    target_return: float  # the held-out decision's return estimate (nan: none yet)

    @property
    def key(self) -> tuple[str, int]:
        return self.training_run_id, self.decision_step


@dataclass(frozen=True, slots=True)
class Consumed:
    """A decision an update consumed; held-out ones keep their return as a target."""

    key: tuple[str, int]
    target_return: float | None = None


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _progress(row: Sequence[float | None]) -> Progress:
    return Progress(_number(row[0]), _number(row[1]), _number(row[2]))


def _finite(value: float) -> float | None:
    """SQLite stores NaN as NULL; say so explicitly."""
    return value if math.isfinite(value) else None


class ExperienceStore:
    """Thread-safe: the intake writes from the event loop's worker threads while the
    learner reads and updates from its own."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            self._db.execute(statement)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    @staticmethod
    def _count(db: sqlite3.Connection, name: str, amount: int = 1) -> None:
        if amount:
            db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, amount),
            )

    # ------------------------------------------------------------------ writing

    def add_segment(
        self,
        segment: pb.Trajectory,
        signer_key_id: str,
        *,
        held_out: Sequence[bool],
        now_s: float,
    ) -> int:
        """Store a checked segment (``held_out`` per step); returns the new decisions."""
        run = segment.training_run_id
        digest = segment.topology.digest
        new = 0
        with self._transaction() as db:
            if segment.steps:
                db.execute(
                    "INSERT OR IGNORE INTO topologies (digest, arrays, stored_s) VALUES (?, ?, ?)",
                    (digest, segment.topology.arrays, now_s),
                )
            for step, kept in zip(segment.steps, held_out, strict=True):
                p = step.progress
                cursor = db.execute(
                    "INSERT OR IGNORE INTO decisions (training_run_id, decision_step, "
                    "signer_key_id, command_id, topology, policy_version, acted, held_out, "
                    "loss, accuracy, parameter_ratio, step, stored_s) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run, step.decision_step, signer_key_id, step.command_id, digest,
                        step.policy_version, int(step.acted), int(kept),
                        _finite(p.training_loss), _finite(p.validation_accuracy),
                        _finite(p.parameter_ratio), step.SerializeToString(), now_s,
                    ),
                )  # fmt: skip
                new += cursor.rowcount
            if segment.run_ended:
                p = segment.final_progress
                db.execute(
                    "INSERT OR IGNORE INTO run_ends (training_run_id, loss, accuracy, "
                    "parameter_ratio, stored_s) VALUES (?, ?, ?, ?, ?)",
                    (run, _finite(p.training_loss), _finite(p.validation_accuracy),
                     _finite(p.parameter_ratio), now_s),
                )  # fmt: skip
            self._count(db, "decisions_stored", new)
            self._count(db, "decisions_duplicate", len(segment.steps) - new)
        return new

    def add_report(self, report: pb.FieldReport, payload: bytes, signer_key_id: str, *,
                   now_s: float) -> bool:  # fmt: skip
        """Store a field report under its signer; False for a duplicate."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO reports (signer_key_id, command_id, report_id, payload, "
                "stored_s) VALUES (?, ?, ?, ?, ?)",
                (signer_key_id, report.command_id, report.report_id, payload, now_s),
            )
            new = cursor.rowcount == 1
            self._count(db, "reports_stored" if new else "reports_duplicate")
        return new

    # --------------------------------------------------------------------- join

    def pending_chains(self) -> list[tuple[str, list[DecisionFacts], RunEnd | None]]:
        """Per run with pending decisions: its decisions from the first pending one on
        (each with its report's terms when one is stored) and its end, if known."""
        rows = self._query(
            "SELECT d.training_run_id, d.decision_step, d.acted, d.loss, d.accuracy, "
            "d.parameter_ratio, d.stored_s, d.state, r.payload, "
            "e.loss, e.accuracy, e.parameter_ratio, e.stored_s "
            "FROM decisions d "
            "JOIN (SELECT training_run_id, MIN(decision_step) AS first FROM decisions "
            "      WHERE state = 0 GROUP BY training_run_id) p "
            "  ON d.training_run_id = p.training_run_id AND d.decision_step >= p.first "
            "LEFT JOIN reports r ON r.signer_key_id = d.signer_key_id "
            "  AND r.command_id = d.command_id "
            "LEFT JOIN run_ends e ON e.training_run_id = d.training_run_id "
            "ORDER BY d.training_run_id, d.decision_step"
        )
        chains: dict[str, tuple[list[DecisionFacts], RunEnd | None]] = {}
        for row in rows:
            run = str(row[0])
            payload = row[8]
            terms = None
            if isinstance(payload, bytes):
                terms = RewardTerms.of_report(pb.FieldReport.FromString(payload))
            facts = DecisionFacts(
                decision_step=int(row[1]),
                acted=bool(row[2]),
                progress=_progress(row[3:6]),
                stored_s=float(row[6]),
                pending=row[7] == DecisionState.PENDING,
                report_terms=terms,
            )
            end = None if row[12] is None else RunEnd(_progress(row[9:12]), float(row[12]))
            chains.setdefault(run, ([], end))[0].append(facts)
        return [(run, chain, end) for run, (chain, end) in chains.items()]

    def apply_join(
        self, run: str, completed: Sequence[Completed], expired: Sequence[tuple[int, Expiry]]
    ) -> None:
        with self._transaction() as db:
            db.executemany(
                "UPDATE decisions SET state = ?, reward = ?, next_step = ? "
                "WHERE training_run_id = ? AND decision_step = ? AND state = 0",
                [(DecisionState.COMPLETE, c.reward, c.next_step, run, c.decision_step)
                 for c in completed],
            )  # fmt: skip
            db.executemany(
                "UPDATE decisions SET state = ? WHERE training_run_id = ? AND decision_step = ?",
                [(DecisionState.EXPIRED, run, step) for step, _ in expired],
            )
            self._count(db, "joined", len(completed))
            for reason in Expiry:
                self._count(db, f"expired_{reason}", sum(1 for _, r in expired if r is reason))

    def expire_unmatched_reports(self, *, now_s: float, wait_s: float) -> int:
        """Reports whose decision has not come after ``wait_s`` are counted and set aside."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE reports SET unmatched = 1 WHERE unmatched = 0 AND stored_s <= ? "
                "AND NOT EXISTS (SELECT 1 FROM decisions d WHERE "
                "d.signer_key_id = reports.signer_key_id AND d.command_id = reports.command_id)",
                (now_s - wait_s,),
            )
            self._count(db, "reports_unmatched", cursor.rowcount)
        return cursor.rowcount

    # ----------------------------------------------------------------- learning

    def ready(self) -> tuple[int, int]:
        """Complete decisions waiting for an update: (trainable, held out)."""
        rows = self._query(
            "SELECT held_out, COUNT(*) FROM decisions WHERE state = 1 GROUP BY held_out"
        )
        by_flag = {bool(flag): int(n) for flag, n in rows}
        return by_flag.get(False, 0), by_flag.get(True, 0)

    def complete_decisions(self, limit: int) -> list[StoredDecision]:
        """Up to ``limit`` complete decisions, run by run in decision-step order."""
        return self._decisions(
            "WHERE state = 1 ORDER BY training_run_id, decision_step LIMIT ?", (limit,)
        )

    def decisions_at(
        self, keys: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], StoredDecision]:
        """The stored decisions of ``keys`` (those pruned or never stored are absent)."""
        found: dict[tuple[str, int], StoredDecision] = {}
        for run, step in keys:
            for decision in self._decisions(
                "WHERE training_run_id = ? AND decision_step = ?", (run, step)
            ):
                found[decision.key] = decision
        return found

    def held_out_decisions(self, limit: int) -> list[StoredDecision]:
        """The most recent held-out decisions with a return target."""
        return self._decisions(
            "WHERE held_out = 1 AND state = 3 AND target_return IS NOT NULL "
            "ORDER BY stored_s DESC, training_run_id, decision_step LIMIT ?",
            (limit,),
        )

    def _decisions(self, where: str, args: Sequence[object]) -> list[StoredDecision]:
        rows = self._query(
            "SELECT training_run_id, decision_step, topology, step, held_out, reward, "
            f"next_step, target_return FROM decisions {where}",
            args,
        )
        return [
            StoredDecision(
                str(r[0]),
                int(r[1]),
                str(r[2]),
                pb.TrajectoryStep.FromString(r[3]),
                bool(r[4]),
                _number(r[5]),
                None if r[6] is None else int(r[6]),
                _number(r[7]),
            )
            for r in rows
        ]

    def topology_arrays(self, digest: str) -> bytes | None:
        rows = self._query("SELECT arrays FROM topologies WHERE digest = ?", (digest,))
        return bytes(rows[0][0]) if rows else None

    def mark_used(self, consumed: Sequence[Consumed], batch: int) -> None:
        with self._transaction() as db:
            db.executemany(
                "UPDATE decisions SET state = 3, batch = ?, target_return = ? "
                "WHERE training_run_id = ? AND decision_step = ?",
                [(batch, c.target_return, *c.key) for c in consumed],
            )

    def release_after(self, batch: int) -> int:
        """Put back decisions consumed by updates after ``batch`` (a checkpoint that
        did not see them); returns how many."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE decisions SET state = 1, batch = NULL, target_return = NULL "
                "WHERE state = 3 AND batch > ?",
                (batch,),
            )
        return cursor.rowcount

    def max_policy_version(self) -> int:
        rows = self._query("SELECT MAX(policy_version) FROM decisions")
        value = rows[0][0]
        return 0 if value is None else int(value)

    def counts(self) -> dict[str, int]:
        stored = dict(self._query("SELECT name, value FROM counters"))
        return {name: int(stored.get(name, 0)) for name in COUNTERS}

    def prune(self, *, now_s: float, retain_s: float) -> int:
        """Drop what is older than ``retain_s`` and no longer waited on: used and
        expired decisions (but each run's last one, a late successor's predecessor),
        reports and run ends of no pending or complete decision; then topologies no
        decision uses. Returns the decisions removed."""
        cutoff = now_s - retain_s
        with self._transaction() as db:
            db.execute(
                "DELETE FROM reports WHERE stored_s <= ? AND NOT EXISTS (SELECT 1 FROM "
                "decisions d WHERE d.signer_key_id = reports.signer_key_id "
                "AND d.command_id = reports.command_id AND d.state IN (0, 1))",
                (cutoff,),
            )
            cursor = db.execute(
                "DELETE FROM decisions WHERE state IN (2, 3) AND stored_s <= ? "
                "AND decision_step < (SELECT MAX(decision_step) FROM decisions l "
                "WHERE l.training_run_id = decisions.training_run_id)",
                (cutoff,),
            )
            removed = cursor.rowcount
            db.execute(
                "DELETE FROM run_ends WHERE stored_s <= ? AND NOT EXISTS (SELECT 1 FROM "
                "decisions d WHERE d.training_run_id = run_ends.training_run_id "
                "AND d.state IN (0, 1))",
                (cutoff,),
            )
            db.execute(
                "DELETE FROM topologies WHERE NOT EXISTS "
                "(SELECT 1 FROM decisions d WHERE d.topology = topologies.digest)"
            )
        return removed

    def close(self) -> None:
        with self._lock:
            self._db.close()
