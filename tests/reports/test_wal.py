"""The write-ahead log: framing, recovery past torn and corrupt records, fsync
policies, the directory lock, segments and compaction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leyline_pb import leyline_pb2 as pb
from oona.metrics import BusMetrics
from tamiyo_bus.reports.wal import (
    FsyncPolicy,
    WalLocked,
    WalSettings,
    WriteAheadLog,
    scan,
    segment_paths,
)

CRITICAL = pb.MESSAGE_PRIORITY_CRITICAL


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _write(directory: Path, bodies: list[bytes], settings: WalSettings | None = None) -> None:
    wal = WriteAheadLog(directory, settings or WalSettings())
    for body in bodies:
        wal.append(1, body)
    wal.close()


def _bodies(directory: Path) -> list[bytes]:
    return [r.body for r in scan(directory, WalSettings()).records]


def test_records_round_trip_and_numbering_continues_in_a_new_segment(tmp_path: Path) -> None:
    _write(tmp_path, [b"a", b"b"])
    wal = WriteAheadLog(tmp_path, WalSettings())
    assert [(r.seq, r.body) for r in wal.recovered.records] == [(1, b"a"), (2, b"b")]
    assert wal.append(3, b"c", CRITICAL) == 3
    wal.close()
    records = scan(tmp_path, WalSettings()).records
    assert [(r.seq, r.kind, r.priority, r.body) for r in records] == [
        (1, 1, pb.MESSAGE_PRIORITY_NORMAL, b"a"),
        (2, 1, pb.MESSAGE_PRIORITY_NORMAL, b"b"),
        (3, 3, CRITICAL, b"c"),
    ]
    assert len(segment_paths(tmp_path)) == 2  # an existing segment is never appended to


def test_torn_tail_is_skipped_with_a_counted_warning_and_the_log_carries_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path, [b"first", b"second", b"third" * 20])
    [segment] = segment_paths(tmp_path)
    os.truncate(segment, segment.stat().st_size - 30)  # the last write was cut short

    metrics = BusMetrics()
    wal = WriteAheadLog(tmp_path, WalSettings(), metrics)
    assert [r.body for r in wal.recovered.records] == [b"first", b"second"]
    assert wal.recovered.segments[0].torn_tail
    assert metrics.count("wal_corrupt_regions") == 1
    assert metrics.count("wal_skipped_bytes") > 0
    assert "torn tail" in caplog.text
    wal.append(1, b"after the crash")
    wal.close()
    assert _bodies(tmp_path) == [b"first", b"second", b"after the crash"]


def test_corrupt_record_in_the_middle_is_skipped_and_later_records_recovered(
    tmp_path: Path,
) -> None:
    _write(tmp_path, [f"record-{i}".encode() for i in range(6)])
    [segment] = segment_paths(tmp_path)
    data = bytearray(segment.read_bytes())
    frame = len(data) // 6
    data[2 * frame + 12] ^= 0xFF  # a flipped bit in record 2's payload
    data[4 * frame : 4 * frame + 4] = b"\xff\xff\xff\xff"  # record 4's length is garbage
    segment.write_bytes(bytes(data))

    result = scan(tmp_path, WalSettings())
    assert [r.body for r in result.records] == [b"record-0", b"record-1", b"record-3", b"record-5"]
    assert result.corrupt_regions == 2
    assert not result.segments[0].torn_tail


def test_a_segment_of_garbage_is_not_fatal(tmp_path: Path) -> None:
    _write(tmp_path, [b"kept"])
    (tmp_path / "000000000099.wal").write_bytes(os.urandom(4096))
    wal = WriteAheadLog(tmp_path, WalSettings())
    assert [r.body for r in wal.recovered.records] == [b"kept"]
    assert wal.recovered.skipped_bytes == 4096
    wal.close()


def test_one_owner_at_a_time(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, WalSettings())
    with pytest.raises(WalLocked):
        WriteAheadLog(tmp_path, WalSettings())
    wal.close()
    WriteAheadLog(tmp_path, WalSettings()).close()


def test_every_record_policy_syncs_each_append_and_groups_a_batch(tmp_path: Path) -> None:
    synced: list[int] = []
    wal = WriteAheadLog(tmp_path, WalSettings(), fsync=synced.append)
    wal.append(1, b"x")
    wal.append(1, b"y")
    wal.append_many([(1, b"z", 0)] * 10)
    assert len(synced) == 3
    wal.close()


def test_interval_policy_syncs_when_due_and_critical_at_once(tmp_path: Path) -> None:
    synced: list[int] = []
    clock = Clock()
    settings = WalSettings(fsync_policy=FsyncPolicy.INTERVAL, fsync_interval_ms=50.0)
    wal = WriteAheadLog(tmp_path, settings, fsync=synced.append, clock=clock)
    wal.append(1, b"x")
    wal.append(1, b"y")
    assert synced == []
    assert wal.seconds_until_sync_due() == pytest.approx(0.05)
    clock.now += 0.049
    wal.sync_if_due()
    assert synced == []
    clock.now += 0.001
    wal.sync_if_due()
    assert len(synced) == 1
    assert wal.seconds_until_sync_due() is None
    wal.append(1, b"critical", CRITICAL)
    assert len(synced) == 2  # CRITICAL does not wait for the interval
    wal.append(1, b"asked", sync=True)
    assert len(synced) == 3
    wal.close()


def test_segments_roll_at_their_size_limit(tmp_path: Path) -> None:
    settings = WalSettings(segment_max_bytes=200)
    wal = WriteAheadLog(tmp_path, settings)
    for i in range(20):
        wal.append(1, b"%02d" % i + b"." * 40)
    wal.close()
    assert len(segment_paths(tmp_path)) >= 5
    assert [int(b[:2]) for b in _bodies(tmp_path)] == list(range(20))


def test_compaction_deletes_dead_segments_and_rewrites_sparse_ones(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, WalSettings(segment_max_bytes=100))  # two records each
    for i in range(12):
        wal.append(1, b"r%02d" % i + b"." * 40)
    assert len(wal.segments()) == 6  # 1-2, 3-4, ... 11-12 (active)
    live = {2, 9, 11, 12}  # 2 and 9 are alone in their segments: half live, rewritten
    stats = wal.compact(lambda seq, _: seq in live, rewrite_ratio=0.5)
    assert (stats.deleted, stats.rewritten, stats.copied) == (3, 2, 2)
    assert stats.removed_seqs == frozenset(range(1, 13)) - live
    wal.close()
    assert [r.seq for r in scan(tmp_path, WalSettings()).records] == [2, 9, 11, 12]


def test_compaction_keeps_segments_mostly_live(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, WalSettings(segment_max_bytes=100))
    for i in range(4):
        wal.append(1, b"r%02d" % i + b"." * 40)
    stats = wal.compact(lambda seq, _: seq != 1, rewrite_ratio=0.25)  # 1-2 is half live
    assert (stats.deleted, stats.rewritten) == (0, 0)
    wal.close()


def test_a_record_copied_twice_is_recovered_once(tmp_path: Path) -> None:
    _write(tmp_path, [b"only"])
    [segment] = segment_paths(tmp_path)
    (tmp_path / "000000000050.wal").write_bytes(segment.read_bytes())  # crash mid-compaction
    wal = WriteAheadLog(tmp_path, WalSettings())
    assert [(r.seq, r.body) for r in wal.recovered.records] == [(1, b"only")]
    stats = wal.compact(lambda seq, _: False, rewrite_ratio=0.5)
    assert stats.removed_seqs == frozenset({1})  # gone only once both copies are
    wal.close()
