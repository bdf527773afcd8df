"""Checkpoints written beside a learner, never in its way.

``submit`` copies the state it is given (tensors detached and cloned to the CPU: the
learner goes on changing its own) and returns; a background thread writes the copy.
While a write is in progress, a newer submission replaces any one still waiting
(latest wins: an older state is of no use once a newer one exists), and is counted.

Each checkpoint is a directory ``step-<step>``: ``state.safetensors`` (tensors only,
no pickle, nothing executed on load) and ``manifest.json`` (the step, the caller's
string metadata and the SHA-256 of the tensor file). It is written under a temporary
name, flushed to disk, and renamed into place in one step, so a reader sees a whole
checkpoint or none. A checkpoint whose manifest is missing, unreadable or whose file
does not match its digest (a torn or tampered write) is skipped by ``load_latest``,
which falls back to the next newest. The last ``keep_last`` good checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from oona.settings import DEFAULT_DATA_DIR

log = logging.getLogger(__name__)

FORMAT = "tamiyo-async-checkpoint/1"
_PREFIX = "step-"
_TEMPORARY = ".writing-"
_STATE = "state.safetensors"
_MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True)
class CheckpointSettings:
    directory: Path = DEFAULT_DATA_DIR / "checkpoints"
    keep_last: int = 3  # good checkpoints kept; older ones are deleted after each write

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise ValueError("keep_last must be at least 1")


@dataclass(frozen=True, slots=True)
class SavedCheckpoint:
    step: int
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    path: Path


@dataclass(slots=True)
class CheckpointStats:
    submitted: int = 0
    written: int = 0
    superseded: int = 0  # replaced by a newer submission before it was written
    failed: int = 0  # writes that raised (the previous checkpoints stay)
    last_step: int = -1  # of the last checkpoint written
    last_write_s: float = 0.0  # how long the last write took in the background
    longest_write_s: float = 0.0


@dataclass(frozen=True, slots=True)
class _Snapshot:
    step: int
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


class AsyncCheckpointer:
    """Owns one checkpoint directory and the thread that writes into it."""

    def __init__(self, settings: CheckpointSettings) -> None:
        self.settings = settings
        self.stats = CheckpointStats()
        settings.directory.mkdir(parents=True, exist_ok=True)
        self._condition = threading.Condition()
        self._waiting: _Snapshot | None = None
        self._writing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def submit(
        self, step: int, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
    ) -> None:
        """Copy the state now; it is written in the background."""
        snapshot = _Snapshot(
            step,
            {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()},
            {str(k): str(v) for k, v in metadata.items()},
        )
        with self._condition:
            if self._closed:
                raise RuntimeError("the checkpointer is closed")
            self.stats.submitted += 1
            if self._waiting is not None:
                self.stats.superseded += 1
            self._waiting = snapshot
            self._condition.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything submitted is written (or failed); False on timeout."""
        with self._condition:
            return self._condition.wait_for(
                lambda: self._waiting is None and not self._writing, timeout=timeout_s
            )

    def close(self, timeout_s: float = 60.0) -> bool:
        """Write what is waiting, then stop the thread; False if it did not finish."""
        flushed = self.flush(timeout_s)
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join(timeout_s)
        return flushed and not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._waiting is not None or self._closed)
                snapshot = self._waiting
                if snapshot is None:
                    return
                self._waiting = None
                self._writing = True
            started = time.perf_counter()
            try:
                write_checkpoint(
                    self.settings.directory, snapshot.step, snapshot.tensors, snapshot.metadata
                )
                prune(self.settings.directory, self.settings.keep_last)
            except Exception:
                log.exception("checkpoint of step %d not written", snapshot.step)
                failed = True
            else:
                failed = False
            with self._condition:
                took_s = time.perf_counter() - started
                if failed:
                    self.stats.failed += 1
                else:
                    self.stats.written += 1
                    self.stats.last_step = snapshot.step
                    self.stats.last_write_s = took_s
                    self.stats.longest_write_s = max(self.stats.longest_write_s, took_s)
                self._writing = False
                self._condition.notify_all()


def write_checkpoint(
    directory: Path, step: int, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> Path:
    """Write one checkpoint synchronously (the background thread's work), atomically."""
    if step < 0:
        raise ValueError("a checkpoint's step is not negative")
    final = directory / f"{_PREFIX}{step:012d}"
    temporary = directory / f"{_TEMPORARY}{step:012d}-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        data = save_tensors(dict(tensors))
        manifest = {
            "format": FORMAT,
            "step": step,
            "sha256": hashlib.sha256(data).hexdigest(),
            "metadata": dict(metadata),
        }
        _write_synced(temporary / _STATE, data)
        _write_synced(temporary / _MANIFEST, json.dumps(manifest, sort_keys=True).encode())
        _sync_directory(temporary)
        if final.exists():
            shutil.rmtree(final)
        temporary.rename(final)
        _sync_directory(directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


def load_latest(directory: Path) -> SavedCheckpoint | None:
    """The newest whole checkpoint in ``directory`` (torn ones are skipped and logged)."""
    for path in _checkpoints(directory, newest_first=True):
        loaded = _load(path)
        if loaded is not None:
            return loaded
    return None


def prune(directory: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` good checkpoints, torn ones older than
    them, and temporary directories left by a writer that died."""
    kept = 0
    for path in _checkpoints(directory, newest_first=True):
        if kept < keep_last and _manifest(path) is not None:
            kept += 1
        elif kept >= keep_last:
            shutil.rmtree(path, ignore_errors=True)
    for leftover in directory.glob(f"{_TEMPORARY}*"):
        if f"-{os.getpid()}-" not in leftover.name:
            shutil.rmtree(leftover, ignore_errors=True)


def _checkpoints(directory: Path, *, newest_first: bool) -> list[Path]:
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob(f"{_PREFIX}*") if p.name[len(_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]), reverse=newest_first)


def _manifest(path: Path) -> dict[str, object] | None:
    try:
        manifest = json.loads((path / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    return manifest


def _load(path: Path) -> SavedCheckpoint | None:
    manifest = _manifest(path)
    if manifest is None:
        log.warning("checkpoint %s skipped: no readable manifest (a torn write)", path)
        return None
    try:
        data = (path / _STATE).read_bytes()
    except OSError as error:
        log.warning("checkpoint %s skipped: %s", path, error)
        return None
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        log.warning("checkpoint %s skipped: its tensors do not match the manifest", path)
        return None
    metadata = manifest.get("metadata")
    step = manifest.get("step")
    if not isinstance(metadata, dict) or not isinstance(step, int):
        log.warning("checkpoint %s skipped: a malformed manifest", path)
        return None
    return SavedCheckpoint(
        step, load_tensors(data), {str(k): str(v) for k, v in metadata.items()}, path
    )


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _sync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
