"""Operator retry requests: files the CLI drops into the log directory.

The CLI never writes the log (its owner holds the lock). It leaves one file per
request in ``<log dir>/retry-requests/`` (``all`` for every parked report), created
under a temporary name and renamed, so the owner never reads half a request. The
owner picks requests up within `control_poll_interval_ms`, or at its next start,
logs what it did, and removes them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

REQUESTS_DIR = "retry-requests"
ALL = "all"
_NAME = re.compile(r"^(all|fr-[0-9a-f]{32})$")


def requests_dir(wal_dir: Path) -> Path:
    return wal_dir / REQUESTS_DIR


def valid_target(name: str) -> bool:
    """A report id (``fr-`` and 32 hex digits) or ``all``."""
    return _NAME.match(name) is not None


def request_retry(wal_dir: Path, target: str) -> Path:
    """Ask the log's owner to retry `target` (a report id or ``all``)."""
    if not valid_target(target):
        raise ValueError(f"not a report id or 'all': {target!r}")
    directory = requests_dir(wal_dir)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / target
    temporary = directory / f".{target}.{os.getpid()}"
    temporary.write_bytes(b"")
    os.replace(temporary, final)
    return final


def pending_requests(wal_dir: Path) -> list[Path]:
    """Request files waiting to be handled (temporary and unknown names skipped)."""
    directory = requests_dir(wal_dir)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if valid_target(p.name))
