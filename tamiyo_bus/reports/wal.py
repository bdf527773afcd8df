"""An append-only write-ahead log of numbered records in segment files.

Frame: ``length`` (u32, big-endian) | ``crc32`` (u32, over the length bytes and the
payload) | payload, where the payload is ``seq`` (u64) | ``kind`` (u8) | ``priority``
(u8) | body. Sequence numbers increase across segments and identify a record: a record
copied by compaction keeps its number, and recovery keeps one copy of each.

Existing segments are never written again. A process that opens the log scans every
segment and then appends to a new one, so a torn tail left by a crash stays where it
is, is skipped on every scan with a counted warning, and disappears when compaction
deletes its segment. A frame that fails its checks anywhere in a segment starts a
corrupt region; the scan looks for the next valid frame after it and carries on, so
one bad record never hides the records behind it.

Durability. Frames are written with `os.write` on an unbuffered descriptor, so a
record survives a crash of the process as soon as `append` returns. Surviving a crash
of the machine needs an fsync; the policy says when:

- ``every_record``: before `append` returns (records appended together share one
  fsync: group commit);
- ``interval``: at most `fsync_interval_ms` after the first unsynced record;
- a CRITICAL record, or an append with ``sync=True``, is fsynced before `append`
  returns under either policy.

One process owns a log directory at a time (an exclusive `flock` on ``LOCK``);
readers such as the CLI scan without the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from leyline_pb import leyline_pb2 as pb
from oona.metrics import BusMetrics

log = logging.getLogger(__name__)

HEADER = struct.Struct(">II")
PREFIX = struct.Struct(">QBB")
SEGMENT_SUFFIX = ".wal"
LOCK_NAME = "LOCK"


class FsyncPolicy(StrEnum):
    EVERY_RECORD = "every_record"
    INTERVAL = "interval"


@dataclass(frozen=True)
class WalSettings:
    """How the log syncs, how large segments grow, and what counts as a sane frame."""

    fsync_policy: FsyncPolicy = FsyncPolicy.EVERY_RECORD
    fsync_interval_ms: float = 50.0
    segment_max_bytes: int = 8 * 1024 * 1024
    max_record_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.fsync_interval_ms <= 0:
            raise ValueError("fsync_interval_ms must be > 0")
        if self.segment_max_bytes <= 0 or self.max_record_bytes <= PREFIX.size:
            raise ValueError("segment_max_bytes and max_record_bytes must be positive")


class WalLocked(RuntimeError):
    """Another process owns this log directory."""


@dataclass(frozen=True)
class Record:
    seq: int
    kind: int
    priority: int
    body: bytes


def encode(record: Record) -> bytes:
    """One frame: length, CRC32 of length and payload, payload."""
    payload = PREFIX.pack(record.seq, record.kind, record.priority) + record.body
    length = struct.pack(">I", len(payload))
    return length + struct.pack(">I", zlib.crc32(payload, zlib.crc32(length))) + payload


def _frame_at(data: bytes, offset: int, max_record_bytes: int) -> tuple[Record, int] | None:
    """The valid frame starting at `offset` and where it ends, or None."""
    if offset + HEADER.size > len(data):
        return None
    length, crc = HEADER.unpack_from(data, offset)
    start = offset + HEADER.size
    end = start + length
    if length < PREFIX.size or length > max_record_bytes or end > len(data):
        return None
    payload = data[start:end]
    if zlib.crc32(payload, zlib.crc32(data[offset : offset + 4])) != crc:
        return None
    seq, kind, priority = PREFIX.unpack_from(payload)
    return Record(seq, kind, priority, payload[PREFIX.size :]), end


@dataclass
class SegmentScan:
    """What one segment held: its valid records (with their frames) and its damage."""

    path: Path
    records: list[Record] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    corrupt_regions: int = 0
    skipped_bytes: int = 0
    torn_tail: bool = False


def scan_segment(path: Path, max_record_bytes: int) -> SegmentScan:
    """Every valid frame of a segment; corrupt regions are skipped, never fatal."""
    data = path.read_bytes()
    scan = SegmentScan(path)
    offset = 0
    while offset < len(data):
        found = _frame_at(data, offset, max_record_bytes)
        if found is not None:
            record, end = found
            scan.records.append(record)
            scan.frames.append(data[offset:end])
            offset = end
            continue
        resume = offset + 1
        while resume < len(data) and _frame_at(data, resume, max_record_bytes) is None:
            resume += 1
        scan.corrupt_regions += 1
        scan.skipped_bytes += resume - offset
        scan.torn_tail = resume >= len(data)
        log.warning(
            "write-ahead log %s: skipped %d unreadable bytes at offset %d (%s)",
            path, resume - offset, offset, "torn tail" if scan.torn_tail else "corrupt record",
        )  # fmt: skip
        offset = resume
    return scan


@dataclass
class ScanResult:
    """All segments of a log: records in sequence order (one copy each) and damage."""

    segments: list[SegmentScan]
    records: list[Record]

    @property
    def corrupt_regions(self) -> int:
        return sum(s.corrupt_regions for s in self.segments)

    @property
    def skipped_bytes(self) -> int:
        return sum(s.skipped_bytes for s in self.segments)


def segment_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SEGMENT_SUFFIX}"))


def scan(directory: Path, settings: WalSettings) -> ScanResult:
    """Read every segment of a log (read-only; safe beside the owning process)."""
    segments = [scan_segment(p, settings.max_record_bytes) for p in segment_paths(directory)]
    by_seq: dict[int, Record] = {}
    for segment in segments:
        for record in segment.records:
            by_seq.setdefault(record.seq, record)
    return ScanResult(segments, [by_seq[s] for s in sorted(by_seq)])


LivenessTest = Callable[[int, Callable[[int], bool]], bool]
Opener = Callable[[Path, int, int], int]


@dataclass(frozen=True)
class CompactionStats:
    deleted: int = 0
    rewritten: int = 0
    copied: int = 0
    removed_seqs: frozenset[int] = frozenset()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """The owning process's handle on a log directory; thread-safe.

    Opening takes the directory lock, scans every segment (`recovered`) and starts a
    new active segment. `fsync` and `opener` (how segment files are opened) are
    injectable, so tests can hold a sync or refuse a segment as a full disk would.
    """

    def __init__(
        self,
        directory: Path,
        settings: WalSettings,
        metrics: BusMetrics | None = None,
        *,
        fsync: Callable[[int], None] = os.fsync,
        clock: Callable[[], float] = time.monotonic,
        opener: Opener = os.open,
    ) -> None:
        self.directory = directory
        self.settings = settings
        self.metrics = metrics or BusMetrics()
        self._fsync = fsync
        self._clock = clock
        self._opener = opener
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise WalLocked(f"another process owns the write-ahead log in {directory}") from None
        self.recovered = scan(directory, settings)
        self.metrics.inc("wal_corrupt_regions", self.recovered.corrupt_regions)
        self.metrics.inc("wal_skipped_bytes", self.recovered.skipped_bytes)
        self._segments: dict[Path, list[int]] = {
            s.path: [r.seq for r in s.records] for s in self.recovered.segments
        }
        self._copies: Counter[int] = Counter(
            seq for seqs in self._segments.values() for seq in seqs
        )
        self._next_seq = max(self._copies, default=0) + 1
        numbers = [int(p.stem) for p in self._segments if p.stem.isdigit()]
        self._next_segment = max(numbers, default=0) + 1
        self._fd = -1
        self._active = Path()
        self._active_bytes = 0
        self._dirty_since: float | None = None
        self._open_segment()

    # ------------------------------------------------------------ segments

    def _open_segment(self) -> None:
        """Make the next segment the active one. When it cannot be created (no space,
        no inode, no descriptor left) this raises and changes nothing: the current
        segment stays active and open, and the append that needed room is refused
        (its caller retries)."""
        path = self.directory / f"{self._next_segment:012d}{SEGMENT_SUFFIX}"
        fd = self._opener(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            _fsync_directory(self.directory)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        previous, self._fd = self._fd, fd
        self._next_segment += 1
        self._active = path
        self._active_bytes = 0
        self._segments[path] = []
        if previous >= 0:
            os.close(previous)

    def _roll_if_full(self) -> None:
        if self._active_bytes < self.settings.segment_max_bytes:
            return
        self._sync_locked()
        self._open_segment()

    def segments(self) -> dict[Path, list[int]]:
        """Each segment and the sequence numbers it holds (a snapshot)."""
        with self._lock:
            return {path: list(seqs) for path, seqs in self._segments.items()}

    # ------------------------------------------------------------- writing

    def append(
        self,
        kind: int,
        body: bytes,
        priority: int = pb.MESSAGE_PRIORITY_NORMAL,
        *,
        sync: bool = False,
    ) -> int:
        """Append one record; returns its sequence number."""
        return self.append_many([(kind, body, priority)], sync=sync)[0]

    def append_many(
        self,
        items: Sequence[tuple[int, bytes, int]],
        *,
        sync: bool = False,
        then: Callable[[list[int]], None] | None = None,
    ) -> list[int]:
        """Append records with one write (and at most one fsync); returns their numbers.

        `then` runs with the numbers once the records are written (and synced, where
        the policy says so), still under the log's lock, so compaction never sees a
        record before its owner has registered it.
        """
        if not items:
            return []
        with self._lock:
            self._roll_if_full()
            seqs = list(range(self._next_seq, self._next_seq + len(items)))
            self._next_seq += len(items)
            frames = [
                encode(Record(seq, kind, priority, body))
                for seq, (kind, body, priority) in zip(seqs, items, strict=True)
            ]
            self._write_locked(b"".join(frames), seqs)
            critical = any(p == pb.MESSAGE_PRIORITY_CRITICAL for _, _, p in items)
            if sync or critical or self.settings.fsync_policy is FsyncPolicy.EVERY_RECORD:
                self._sync_locked()
            self.metrics.inc("wal_appends", len(items))
            if then is not None:
                then(seqs)
            return seqs

    def _write_locked(self, data: bytes, seqs: Sequence[int]) -> None:
        """Write whole frames or nothing: a write cut short (the disk filled up) is
        truncated away, so the retry writes the frames once, not a torn copy first."""
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            if len(view) < len(data):
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._active_bytes)
            raise
        self._active_bytes += len(data)
        self._segments[self._active].extend(seqs)
        self._copies.update(seqs)
        if self._dirty_since is None:
            self._dirty_since = self._clock()
        self.metrics.inc("wal_bytes", len(data))

    def _sync_locked(self) -> None:
        if self._dirty_since is None:
            return
        started = time.perf_counter()
        self._fsync(self._fd)
        self._dirty_since = None
        self.metrics.inc("wal_fsyncs")
        self.metrics.observe("wal_fsync_s", time.perf_counter() - started)

    def sync(self) -> None:
        """Fsync whatever was written and not yet synced."""
        with self._lock:
            self._sync_locked()

    def seconds_until_sync_due(self) -> float | None:
        """Under the interval policy, how long until unsynced records must be synced."""
        dirty = self._dirty_since
        if dirty is None:
            return None
        due = dirty + self.settings.fsync_interval_ms / 1000.0
        return max(due - self._clock(), 0.0)

    def sync_if_due(self) -> None:
        wait = self.seconds_until_sync_due()
        if wait is not None and wait <= 0.0:
            self.sync()

    # ----------------------------------------------------------- compaction

    def compact(self, is_live: LivenessTest, *, rewrite_ratio: float) -> CompactionStats:
        """Delete closed segments that hold no live record; rewrite those whose share
        of live records is at most `rewrite_ratio` (their live records are copied,
        numbers unchanged, into the active segment, fsynced, then the old one goes).

        Segments are visited oldest first. `is_live(seq, elsewhere)` decides for one
        record of the segment at hand; `elsewhere(other)` tells whether record `other`
        is stored in some other segment, for records that must not outlive another.
        """
        deleted = rewritten = copied = 0
        removed: set[int] = set()
        with self._lock:
            for path in sorted(p for p in self._segments if p != self._active):
                seqs = self._segments[path]
                here = Counter(seqs)

                def elsewhere(other: int, here: Counter[int] = here) -> bool:
                    return self._copies[other] - here[other] > 0

                live = {seq for seq in seqs if is_live(seq, elsewhere)}
                if live and len(live) / len(seqs) > rewrite_ratio:
                    continue
                if live:
                    scanned = scan_segment(path, self.settings.max_record_bytes)
                    keep = [
                        (r.seq, frame)
                        for r, frame in zip(scanned.records, scanned.frames, strict=True)
                        if r.seq in live
                    ]
                    self._roll_if_full()
                    self._write_locked(b"".join(f for _, f in keep), [s for s, _ in keep])
                    self._sync_locked()
                    copied += len(keep)
                    rewritten += 1
                else:
                    deleted += 1
                path.unlink()
                del self._segments[path]
                self._copies.subtract(seqs)
                removed.update(seq for seq in seqs if self._copies[seq] <= 0)
            if deleted or rewritten:
                _fsync_directory(self.directory)
        self.metrics.inc("wal_segments_deleted", deleted + rewritten)
        self.metrics.inc("wal_records_copied", copied)
        return CompactionStats(deleted, rewritten, copied, frozenset(removed))

    def close(self) -> None:
        """Fsync, close the active segment and release the directory lock."""
        with self._lock:
            if self._fd < 0:
                return
            self._sync_locked()
            os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
