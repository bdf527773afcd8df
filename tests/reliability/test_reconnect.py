"""Issue 18, finding 2: clients recover by themselves after a server restart.

A half-open trial that ends in anything but an IO error gives its slot back (a leaked
slot refused every later call for good), a consumer recreates groups the restarted
server lost without nesting a guarded call inside another, and a consumer outlives a
server error reply instead of dying with it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.exceptions import ResponseError

from leyline_pb import leyline_pb2 as pb
from oona.breaker import BreakerState
from oona.bus import Bus
from oona.connection import open_redis
from oona.consumer import Consumer
from oona.errors import BusUnavailable
from oona.keys import Keyring, Signer
from oona.server import EmbeddedServer
from oona.settings import OonaSettings
from oona.streams import Stream
from tests.bus.helpers import Recorder, subscription, wait_for

TELEMETRY = pb.MESSAGE_TYPE_TELEMETRY
pytestmark = pytest.mark.slow


def _settings(url: str) -> OonaSettings:
    """An outage of a few hundred milliseconds opens the breaker."""
    return OonaSettings(
        redis_url=url, read_block_ms=20, io_timeout_ms=400.0,
        reconnect_backoff_base_ms=10.0, reconnect_backoff_max_ms=50.0,
        io_breaker_failure_threshold=2, io_breaker_cooldown_ms=100.0,
        claim_interval_ms=50, claim_idle_ms=200,
    )  # fmt: skip


async def _open_the_breaker(bus: Bus, server: EmbeddedServer) -> None:
    server.stop(kill=True)
    with pytest.raises(BusUnavailable):
        await bus.publish(TELEMETRY, b"during", stream=Stream.NORMAL)
    assert bus.io.breaker.state is BreakerState.OPEN
    server.start()


async def test_a_half_open_trial_answered_by_an_error_reply_gives_its_slot_back(
    tmp_path: Path, signer: Signer
) -> None:
    server = EmbeddedServer(data_dir=tmp_path / "redis").start()
    settings = _settings(server.url)
    bus = Bus(open_redis(server.url, settings), settings, signer, source="t")
    try:
        await _open_the_breaker(bus, server)

        with pytest.raises(ResponseError, match="NOGROUP"):  # the trial: a server error
            await bus.io.run(lambda: bus.redis.xpending("no-such-stream", "no-such-group"))

        assert await bus.io.run(bus.redis.ping)  # refused for good before the fix
        assert bus.io.breaker.state is BreakerState.CLOSED
    finally:
        await bus.close()
        server.cleanup()


async def test_a_consumer_recreates_the_groups_a_restarted_server_lost(
    tmp_path: Path, signer: Signer, keyring: Keyring
) -> None:
    """Without persistence a restarted server has no groups: the consumer's first read
    is the breaker's trial and is answered NOGROUP."""
    server = EmbeddedServer(data_dir=tmp_path / "redis", appendonly=False).start()
    settings = _settings(server.url)
    bus = Bus(open_redis(server.url, settings), settings, signer, source="t")
    recorder = Recorder()
    consumer = Consumer(bus, subscription(Stream.NORMAL), recorder, keyring)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await bus.publish(TELEMETRY, b"before", stream=Stream.NORMAL)
        await wait_for(lambda: _true(len(recorder.deliveries) == 1))
        await _open_the_breaker(bus, server)

        await bus.publish(TELEMETRY, b"after", stream=Stream.NORMAL)

        await wait_for(lambda: _true(len(recorder.deliveries) == 2), timeout_s=15)
        assert recorder.payloads == [b"before", b"after"]
        assert not task.done()
    finally:
        stop.set()
        await task
        await bus.close()
        server.cleanup()


async def test_a_consumer_outlives_a_server_error_reply_and_resumes_when_it_clears(
    bus: Bus, keyring: Keyring
) -> None:
    """A stream key that holds the wrong type answers every read with WRONGTYPE: the
    consumer says so and waits, and consumes again once the key is a stream."""
    key = bus.key(Stream.NORMAL)
    recorder = Recorder()
    consumer = Consumer(bus, subscription(Stream.NORMAL), recorder, keyring)
    stop = asyncio.Event()
    await bus.redis.set(key, b"not a stream")
    task = asyncio.create_task(consumer.run(stop))
    try:
        await wait_for(lambda: _true(bus.metrics.count("consumer_errors") >= 2))
        assert not task.done()
        assert "WRONGTYPE" in consumer.waiting_for

        await bus.redis.delete(key)
        await bus.publish(TELEMETRY, b"fine again", stream=Stream.NORMAL)

        await wait_for(lambda: _true(recorder.payloads == [b"fine again"]))
        assert consumer.waiting_for == ""
    finally:
        stop.set()
        await task


async def _true(value: bool) -> bool:
    return value


async def test_field_report_delivery_outlives_server_error_replies_on_both_its_streams(
    tmp_path: Path, bus: Bus, keyring: Keyring, signer: Signer
) -> None:
    """Publishing and taking acks share a task group: before, an error reply to either
    ended both, and reports stayed in the log for good."""
    from consumers.simic import ReportStore, SimicIntake
    from tamiyo_bus.reports.book import ReportState
    from tamiyo_bus.reports.delivery import DeliverySettings, ReportDelivery
    from tamiyo_bus.reports.reporter import FieldReporter
    from tests.reports.helpers import command, fast_settings, state

    reports_key, acks_key = bus.key(Stream.FIELD_REPORTS), bus.key(Stream.FIELD_REPORT_ACKS)
    for key in (reports_key, acks_key):
        await bus.redis.set(key, b"not a stream")
    reporter = FieldReporter(fast_settings(tmp_path / "wal"), metrics=bus.metrics).start()
    store = ReportStore(tmp_path / "simic.sqlite3")
    delivery = ReportDelivery(
        reporter, bus, keyring, DeliverySettings(idle_poll_ms=20.0, bus_failure_backoff_max_ms=50.0)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(delivery.run(stop))
    simic_stop = asyncio.Event()
    simic: asyncio.Task[None] | None = None
    try:
        for i in range(5):
            reporter.on_command(command(i), state(0))
        reporter.on_epoch_end(state(2))
        await wait_for(
            lambda: _true(
                bus.metrics.count("reports_publish_failed") >= 2
                and bus.metrics.count("consumer_errors") >= 2
            )
        )
        assert not task.done()

        await bus.redis.delete(reports_key, acks_key)
        simic = asyncio.create_task(SimicIntake(bus, keyring, store).run(simic_stop))

        ids = [e.report_id for e in reporter.book.entries()]
        await wait_for(
            lambda: _true(all(reporter.book.state_of(i) is ReportState.ACKED for i in ids)), 15
        )
        assert len(ids) == 5 and store.count() == 5
    finally:
        stop.set()
        simic_stop.set()
        await task
        if simic is not None:
            await simic
        reporter.close()
        store.close()


async def test_each_service_says_what_it_waits_for_while_the_server_is_down(
    tmp_path: Path, signer: Signer, keyring: Keyring
) -> None:
    from weatherlight.drain import DrainStats, drain_service
    from weatherlight.services import Weatherlight
    from weatherlight.supervisor import ServiceSpec

    server = EmbeddedServer(data_dir=tmp_path / "redis").start()
    weatherlight = Weatherlight(
        [ServiceSpec("drain", drain_service(DrainStats()))],
        oona=_settings(server.url), signer=signer, keyring=keyring, instance="t",
    )  # fmt: skip
    await weatherlight.start()

    def waiting() -> str:
        view = weatherlight.supervisor.health().detail["services"]["drain"]  # type: ignore[index]
        return str(view["waiting_for"])

    try:
        assert waiting() == ""
        server.stop(kill=True)
        await wait_for(lambda: _true(waiting().startswith("the server: unreachable")))
        server.start()
        await wait_for(lambda: _true(waiting() == ""), timeout_s=15)
    finally:
        await weatherlight.stop()
        server.cleanup()
