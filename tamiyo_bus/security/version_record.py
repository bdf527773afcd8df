"""The highest policy version ever installed, kept on local disk.

Version monotonicity is the last guard against a replayed PolicyUpdate: an update is
applied only when it is newer than anything this deployment's Tamiyo has run. Kept in
memory, that guard resets when the process restarts, and the bus's own replay ledger
lives on a server whose persistence Tamiyo does not control. So the version is
written here, durably (a new file fsynced, renamed over the old one, the directory
fsynced), before the update is installed: after a crash at any point the record holds
at least the version that was running.

A record that cannot be read is an error at start-up, never a record of version 0:
failing open would let every old update back in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

_FIELD = "highest_version"


class VersionRecordError(RuntimeError):
    """The record exists but cannot be read or written; the message names the file."""


class VersionRecord:
    """The record in `path` (absent: no version installed yet)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._highest = self._read()

    @property
    def highest(self) -> int:
        return self._highest

    def _read(self) -> int:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise VersionRecordError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            value = json.loads(text)[_FIELD]
        except (ValueError, KeyError, TypeError):
            raise VersionRecordError(f"{self.path} is not a policy version record") from None
        if not isinstance(value, int) or value < 0:
            raise VersionRecordError(f"{self.path} holds no valid version: {value!r}")
        return value

    def advance(self, version: int) -> None:
        """Durably record `version` when it is higher than the record; raises
        VersionRecordError (nothing recorded) when the disk refuses."""
        if version <= self._highest:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(self.path.name + ".new")
        try:
            with staging.open("w", encoding="utf-8") as handle:
                json.dump({_FIELD: version}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise VersionRecordError(f"cannot write {self.path}: {exc.strerror}") from None
        self._highest = version
