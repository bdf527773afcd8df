"""Delivery to Simic on the real server: stored once, acked, retired; failed publishes
are not successes; unacked reports are retried, then parked, then retried on command;
a Simic outage only delays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consumers.simic import ReportStore, SimicIntake
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.connection import open_redis
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.reports.book import ReportState, RetryPolicy
from tamiyo_bus.reports.delivery import DeliverySettings, ReportDelivery
from tamiyo_bus.reports.reporter import FieldReporter
from tamiyo_bus.reports.requests import ALL, request_retry

from .conftest import Background
from .helpers import async_wait_until, command, fast_settings, state

FAST_DELIVERY = DeliverySettings(idle_poll_ms=20.0, bus_failure_backoff_base_ms=10.0)


def _reports(reporter: FieldReporter, count: int, first: int = 0) -> list[str]:
    """`count` decisions at epoch 0, closed by epoch 2: `count` reports written."""
    for i in range(first, first + count):
        reporter.on_command(command(i), state(0))
    reporter.on_epoch_end(state(2 + first))
    reporter.flush()
    return [reporter.book.entries()[i].report_id for i in range(first, first + count)]


def _all(reporter: FieldReporter, state_: ReportState, ids: list[str]) -> bool:
    return all(reporter.book.state_of(i) is state_ for i in ids)


def test_retry_backoff_doubles_is_capped_and_jittered() -> None:
    policy = RetryPolicy(ack_timeout_ms=1_000.0, retry_backoff_max_ms=5_000.0)
    assert [policy.delay_s(n, 1.0) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay_s(1, 0.0) == 0.5  # jitter spreads each wait over 50-100 %


async def test_reports_reach_simics_store_once_and_their_acks_retire_them(
    tmp_path: Path, bus: Bus, simic_bus: Bus, keyring: Keyring, store: ReportStore,
    background: Background,
) -> None:  # fmt: skip
    reporter = FieldReporter(fast_settings(tmp_path / "wal"), metrics=bus.metrics).start()
    ids = _reports(reporter, 40)
    background.start("tamiyo", ReportDelivery(reporter, bus, keyring, FAST_DELIVERY).run)
    background.start("simic", SimicIntake(simic_bus, keyring, store).run)

    await async_wait_until(lambda: _all(reporter, ReportState.ACKED, ids))

    assert sorted(store.report_ids()) == sorted(ids)
    for entry in reporter.book.entries():
        stored = store.get(entry.report_id, signer_key_id=bus.signer.key_id)
        assert stored is not None and stored.report == entry.report
        assert entry.acked_by == "simic/simic-1"
    assert bus.metrics.count("reports_acked") == 40
    assert simic_bus.metrics.count("simic_reports_stored") == 40
    assert await simic_bus.redis.xlen(simic_bus.dead_letter_key(Stream.FIELD_REPORTS)) == 0
    await background.stop_all()
    reporter.close()


async def test_a_failed_publish_is_not_a_success(
    tmp_path: Path, signer: Signer, keyring: Keyring
) -> None:
    unreachable = OonaSettings(
        redis_url=f"unix://{tmp_path}/absent.sock", io_timeout_ms=50.0,
        reconnect_backoff_base_ms=5.0,
    )  # fmt: skip
    bus = Bus(open_redis(unreachable.redis_url, unreachable), unreachable, signer, source="t")
    reporter = FieldReporter(fast_settings(tmp_path / "wal"), metrics=bus.metrics).start()
    ids = _reports(reporter, 5)
    delivery = ReportDelivery(reporter, bus, keyring, FAST_DELIVERY)

    assert await delivery.publish_due() == 0

    assert bus.metrics.count("reports_publish_failed", reason="BusUnavailable") == 5
    assert bus.metrics.count("reports_published") == 0
    for report_id in ids:
        entry = reporter.book.get(report_id)
        assert entry is not None
        assert (entry.state, entry.attempts, entry.published) == (ReportState.PENDING, 0, 0)
    assert reporter.book.seconds_until_due() is not None  # due again after a backoff
    reporter.close()
    await bus.close()


async def test_unacked_reports_are_retried_then_parked_kept_and_retried_on_command(
    tmp_path: Path, bus: Bus, simic_bus: Bus, keyring: Keyring, store: ReportStore,
    background: Background,
) -> None:  # fmt: skip
    retry = RetryPolicy(ack_timeout_ms=10.0, retry_backoff_max_ms=40.0, max_attempts=3)
    settings = fast_settings(tmp_path / "wal", retry=retry)
    reporter = FieldReporter(settings, metrics=bus.metrics).start()
    ids = _reports(reporter, 4)
    background.start("tamiyo", ReportDelivery(reporter, bus, keyring, FAST_DELIVERY).run)

    await async_wait_until(  # Simic is down; the count follows the state change
        lambda: _all(reporter, ReportState.PARKED, ids) and bus.metrics.count("reports_parked") == 4
    )

    assert bus.metrics.count("reports_published") == 4 * 3  # every attempt reached the bus
    assert bus.metrics.count("reports_republished") == 4 * 2
    assert bus.metrics.count("reports_parked") == 4
    assert all(e.attempts == 3 for e in reporter.book.entries(ReportState.PARKED))
    await background.stop("tamiyo")
    reporter.close()

    reporter = FieldReporter(settings, metrics=bus.metrics).start()  # parked survives
    assert [e.report_id for e in reporter.book.entries(ReportState.PARKED)] == ids
    background.start("tamiyo", ReportDelivery(reporter, bus, keyring, FAST_DELIVERY).run)
    request_retry(settings.wal_dir, ALL)
    # Simic stays down until the retried reports went out again: once it is up, the ack
    # of a copy published before parking may retire a report before its next publish.
    await async_wait_until(lambda: bus.metrics.count("reports_published") >= 4 * 4)
    assert bus.metrics.count("reports_retry_requested") == 4
    background.start("simic", SimicIntake(simic_bus, keyring, store).run)

    await async_wait_until(lambda: _all(reporter, ReportState.ACKED, ids))
    await background.stop_all()
    await SimicIntake(simic_bus, keyring, store).drain()  # the copies still in the stream

    copies = bus.metrics.count("reports_published")
    assert copies >= 4 * 4  # three before parking, at least one after the retry
    assert sorted(store.report_ids()) == sorted(ids)  # every copy seen, each stored once
    assert store.duplicates() == copies - 4
    reporter.close()


async def test_reports_accumulate_while_simic_is_down_and_drain_when_it_returns(
    tmp_path: Path, bus: Bus, simic_bus: Bus, keyring: Keyring, store: ReportStore,
    background: Background,
) -> None:  # fmt: skip
    retry = RetryPolicy(ack_timeout_ms=50.0, retry_backoff_max_ms=200.0, max_attempts=1_000)
    reporter = FieldReporter(fast_settings(tmp_path / "wal", retry=retry), metrics=bus.metrics)
    reporter.start()
    background.start("tamiyo", ReportDelivery(reporter, bus, keyring, FAST_DELIVERY).run)
    ids = _reports(reporter, 30)
    await async_wait_until(lambda: bus.metrics.count("reports_republished") >= 30)

    assert _all(reporter, ReportState.PENDING, ids)  # waiting in the log, retried
    assert store.count() == 0

    background.start("simic", SimicIntake(simic_bus, keyring, store).run)
    more = _reports(reporter, 10, first=30)
    await async_wait_until(lambda: _all(reporter, ReportState.ACKED, ids + more))
    assert sorted(store.report_ids()) == sorted(ids + more)
    await background.stop_all()
    reporter.close()


async def test_stray_and_malformed_acks_do_not_retire_anything(
    tmp_path: Path, bus: Bus, keyring: Keyring
) -> None:
    reporter = FieldReporter(fast_settings(tmp_path / "wal"), metrics=bus.metrics).start()
    [report_id] = _reports(reporter, 1)
    stray = pb.FieldReportAck(report_id="fr-" + "0" * 32, consumer="simic/other")
    await bus.publish(
        pb.MESSAGE_TYPE_FIELD_REPORT_ACK, stray.SerializeToString(),
        stream=Stream.FIELD_REPORT_ACKS,
    )  # fmt: skip
    await bus.publish(pb.MESSAGE_TYPE_FIELD_REPORT_ACK, b"", stream=Stream.FIELD_REPORT_ACKS)
    bus.settings = bus.settings.with_overrides(max_deliveries=1)
    delivery = ReportDelivery(reporter, bus, keyring, FAST_DELIVERY)

    await delivery.acks.drain()

    assert bus.metrics.count("reports_acks_unmatched") == 1
    dead: Any = await bus.redis.xrange(bus.dead_letter_key(Stream.FIELD_REPORT_ACKS))
    assert [record[b"reason"] for _, record in dead] == [b"malformed_payload"]  # not retried
    assert reporter.book.state_of(report_id) is ReportState.PENDING
    reporter.close()


@pytest.mark.parametrize("payload", [b"\xff\xff garbage", pb.FieldReport().SerializeToString()])
async def test_simic_dead_letters_what_is_not_a_report(
    payload: bytes, bus: Bus, simic_bus: Bus, keyring: Keyring, store: ReportStore
) -> None:
    simic_bus.settings = simic_bus.settings.with_overrides(max_deliveries=1)
    await bus.publish(pb.MESSAGE_TYPE_FIELD_REPORT, payload, stream=Stream.FIELD_REPORTS)
    await SimicIntake(simic_bus, keyring, store).drain()
    assert store.count() == 0
    assert await simic_bus.redis.xlen(simic_bus.dead_letter_key(Stream.FIELD_REPORTS)) == 1
