"""Issue 18, finding 4: a WAL roll-over that fails (no space, no inode, no descriptor)
leaves the log working on its current segment; appends are refused and retried, never
written to a closed or reused descriptor, and every accepted report is written once the
disk has room again.

One test injects the failure through the log's file opener (runs anywhere); the other
fills a real, small tmpfs (runs where a filesystem can be mounted, as root)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.reports.records import Kind
from tamiyo_bus.reports.reporter import FieldReporter
from tamiyo_bus.reports.wal import WalSettings, scan
from tests.reports.helpers import command, fast_settings, state, wait_until

REPORTS = 200
SEGMENT_BYTES = 2_048


class FullDisk:
    """An opener for the log that fails to create segments while `full` is set."""

    def __init__(self) -> None:
        self.full = False
        self.refused = 0

    def __call__(self, path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if self.full and str(path).endswith(".wal"):
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device (injected)", str(path))
        return os.open(path, flags, mode)


def _reporter(wal_dir: Path, opener: FullDisk | None = None) -> FieldReporter:
    settings = fast_settings(
        wal_dir,
        wal=WalSettings(segment_max_bytes=SEGMENT_BYTES),
        write_retry_backoff_max_ms=20.0,
    )
    return FieldReporter(settings, opener=opener or os.open).start()


def _offer(reporter: FieldReporter, first: int, last: int) -> int:
    return sum(reporter.on_command(command(i), state(0)) for i in range(first, last))


def _fill_the_first_segment(reporter: FieldReporter) -> int:
    """Decisions written while the disk has room: the next append rolls over."""
    accepted = _offer(reporter, 0, 20)
    reporter.flush()
    assert (
        reporter.wal.segments()
        and max(p.stat().st_size for p in reporter.wal.segments()) >= SEGMENT_BYTES
    )
    return accepted


def _offer_the_rest(reporter: FieldReporter) -> int:
    accepted = _offer(reporter, 20, REPORTS)
    assert reporter.on_epoch_end(state(2))  # closes every window: one report each
    return accepted


def _reports(wal_dir: Path) -> Counter[str]:
    records = scan(wal_dir, WalSettings()).records
    return Counter(
        pb.FieldReport.FromString(r.body).report_id for r in records if r.kind == Kind.REPORT
    )


def test_a_roll_over_that_cannot_open_its_segment_loses_no_accepted_report(tmp_path: Path) -> None:
    disk = FullDisk()
    reporter = _reporter(tmp_path / "wal", disk)
    accepted = _fill_the_first_segment(reporter)
    disk.full = True
    accepted += _offer_the_rest(reporter)
    wait_until(lambda: reporter.metrics.count("reports_wal_write_errors") >= 2)

    disk.full = False
    reporter.flush(timeout_s=20)
    reporter.close()

    written = _reports(tmp_path / "wal")
    assert accepted == REPORTS and disk.refused >= 2
    assert len(written) == REPORTS and set(written.values()) == {1}
    assert scan(tmp_path / "wal", WalSettings()).corrupt_regions == 0


@contextlib.contextmanager
def _small_tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=64", "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'}); "
                    "the injected-opener test covers the same path")  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(directory: Path) -> list[Path]:
    """Use up the filesystem's blocks, then its inodes; returns the files that did it."""
    blocks = directory / "blocks"
    with contextlib.suppress(OSError), blocks.open("wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * 4096)
    fillers = [blocks]
    with contextlib.suppress(OSError):
        while True:
            path = directory / f"inode-{len(fillers)}"
            path.touch()
            fillers.append(path)
    return fillers


def test_a_full_tmpfs_under_the_log_loses_no_accepted_report(tmp_path: Path) -> None:
    with _small_tmpfs(tmp_path / "disk") as disk:
        wal_dir = disk / "wal"
        reporter = _reporter(wal_dir)
        accepted = _fill_the_first_segment(reporter)
        fillers = _fill(disk)
        accepted += _offer_the_rest(reporter)
        wait_until(lambda: reporter.metrics.count("reports_wal_write_errors") >= 2)

        for path in fillers:
            path.unlink()
        reporter.flush(timeout_s=20)
        reporter.close()

        written = _reports(wal_dir)
        assert accepted == REPORTS
        assert len(written) == REPORTS and set(written.values()) == {1}
        assert scan(wal_dir, WalSettings()).corrupt_regions == 0
