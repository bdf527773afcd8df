"""Urza's SQLite store.

One file, opened per operation (a connection per call costs well under a millisecond
and keeps the store safe to use from Tamiyo's lookup thread, the trainer and the CLI
at once). WAL journaling lets the CLI quarantine a blueprint while a run reads the
library; the run's cache picks the change up when its entry expires.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from oona.settings import DEFAULT_DATA_DIR
from tamiyo_bus.policy.topology import HostTopology
from tamiyo_bus.urza.blueprint import Blueprint, ConstructorSpec
from tamiyo_bus.urza.catalogue import default_catalogue
from tamiyo_bus.urza_client import BlueprintMetadata

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blueprints (
    blueprint_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    tier INTEGER NOT NULL CHECK (tier >= 0),
    parameter_count INTEGER NOT NULL CHECK (parameter_count >= 0),
    risk REAL NOT NULL CHECK (risk >= 0 AND risk <= 1),
    quarantined INTEGER NOT NULL DEFAULT 0,
    quarantine_reason TEXT NOT NULL DEFAULT '',
    allowed_parameters TEXT NOT NULL,
    constructor TEXT NOT NULL,
    updated_at_s REAL NOT NULL
)
"""
_COLUMNS = (
    "blueprint_id, name, tier, parameter_count, risk, quarantined, quarantine_reason, "
    "allowed_parameters, constructor"
)


@dataclass(frozen=True)
class UrzaSettings:
    """Where the library lives and how long a writer may wait for the file lock."""

    db_path: Path = DEFAULT_DATA_DIR / "urza.sqlite"
    busy_timeout_s: float = 2.0


class UnknownBlueprint(KeyError):
    """The id is not in the library."""


def _row_to_blueprint(row: sqlite3.Row) -> Blueprint:
    bounds = {k: (float(v[0]), float(v[1])) for k, v in json.loads(row[7]).items()}
    return Blueprint(
        blueprint_id=row[0],
        name=row[1],
        tier=int(row[2]),
        parameter_count=int(row[3]),
        risk=float(row[4]),
        quarantined=bool(row[5]),
        quarantine_reason=row[6],
        allowed_parameters=bounds,
        constructor=ConstructorSpec.from_json(row[8]),
    )


def _blueprint_to_row(blueprint: Blueprint) -> tuple[object, ...]:
    return (
        blueprint.blueprint_id,
        blueprint.name,
        blueprint.tier,
        blueprint.parameter_count,
        blueprint.risk,
        int(blueprint.quarantined),
        blueprint.quarantine_reason,
        json.dumps({k: list(v) for k, v in blueprint.allowed_parameters.items()}, sort_keys=True),
        blueprint.constructor.to_json(),
        time.time(),
    )


class UrzaStore:
    """The blueprint library; implements the ``BlueprintCatalog`` protocol."""

    def __init__(self, settings: UrzaSettings | None = None) -> None:
        self.settings = settings or UrzaSettings()
        self.settings.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @classmethod
    def open_seeded(cls, settings: UrzaSettings | None = None) -> UrzaStore:
        """The store, with the default catalogue added where its ids are missing."""
        store = cls(settings)
        store.add_missing(default_catalogue())
        return store

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with (
            closing(
                sqlite3.connect(self.settings.db_path, timeout=self.settings.busy_timeout_s)
            ) as db,
            db,
        ):
            yield db

    # ------------------------------------------------------------------ reads

    def get(self, blueprint_id: str) -> Blueprint:
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM blueprints WHERE blueprint_id = ?", (blueprint_id,)
            ).fetchone()
        if row is None:
            raise UnknownBlueprint(blueprint_id)
        return _row_to_blueprint(row)

    def list(self) -> list[Blueprint]:
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM blueprints ORDER BY tier, blueprint_id"
            ).fetchall()
        return [_row_to_blueprint(r) for r in rows]

    def lookup(self, blueprint_ids: Sequence[str]) -> Mapping[str, BlueprintMetadata]:
        """Metadata of the requested ids that the library knows (the catalog protocol)."""
        if not blueprint_ids:
            return {}
        marks = ",".join("?" * len(blueprint_ids))
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM blueprints WHERE blueprint_id IN ({marks})",
                tuple(blueprint_ids),
            ).fetchall()
        return {row[0]: _row_to_blueprint(row).metadata() for row in rows}

    # ----------------------------------------------------------------- writes

    def add(self, blueprint: Blueprint, *, replace: bool = False) -> None:
        """Insert a blueprint; an existing id is an error unless ``replace``."""
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        try:
            with self._connect() as db:
                db.execute(
                    f"{verb} INTO blueprints ({_COLUMNS}, updated_at_s) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _blueprint_to_row(blueprint),
                )
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"blueprint {blueprint.blueprint_id} already exists") from exc

    def add_missing(self, blueprints: Iterable[Blueprint]) -> int:
        """Insert the blueprints whose ids are absent; returns how many were added.

        Existing rows are left alone, so seeding never undoes an operator's quarantine.
        """
        with self._connect() as db:
            cursor = db.executemany(
                f"INSERT OR IGNORE INTO blueprints ({_COLUMNS}, updated_at_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_blueprint_to_row(b) for b in blueprints],
            )
            return cursor.rowcount

    def quarantine(self, blueprint_id: str, reason: str, *, quarantined: bool = True) -> None:
        """Set (or, with ``quarantined=False``, lift) a blueprint's quarantine."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE blueprints SET quarantined = ?, quarantine_reason = ?, updated_at_s = ? "
                "WHERE blueprint_id = ?",
                (int(quarantined), reason if quarantined else "", time.time(), blueprint_id),
            )
        if cursor.rowcount == 0:
            raise UnknownBlueprint(blueprint_id)


def candidate_blueprints(store: UrzaStore, topology: HostTopology) -> tuple[str, ...]:
    """Every library entry that fits a layer of this host, quarantined ones included: the
    policy sees them and its masks keep it from choosing them."""
    kinds = {layer.kind for layer in topology.layers}
    return tuple(b.blueprint_id for b in store.list() if any(k in kinds for k in b.layer_kinds))
