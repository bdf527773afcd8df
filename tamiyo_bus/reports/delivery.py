"""Delivering field reports to Simic and retiring them when Simic's ack comes back.

The publisher takes the reports that are due from the book and publishes them to the
field-reports stream. Only a publish the bus accepted counts as an attempt; a publish
that fails (server unreachable, stream full, a server error reply) is counted as a
failure, and the reports are due again after a backoff, with no attempt used up. After
each accepted publish Tamiyo waits for the ack with exponential backoff and jitter
(`RetryPolicy`), then publishes again; after `max_attempts` publishes without an ack
the report is parked.

Acks travel on their own stream, read through this instance's consumer group
(`ack_group`; give each Tamiyo instance its own, since every instance must see every
ack). An ack is appended to the log before its stream entry is acknowledged, so a
crash in between only repeats it; an ack the log cannot take (its disk is full) is
counted and dropped, and its report, still pending, is published and acked again once
the log has room. Acks of reports this instance does not hold (another instance's, or
already retired) are counted and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import cast

from redis.exceptions import RedisError

from leyline_pb import leyline_pb2 as pb
from oona.backoff import backoff_s
from oona.bus import Bus, Outgoing
from oona.consumer import Consumer, Delivery, Subscription
from oona.errors import OonaError, RejectedMessage
from oona.keys import Keyring
from oona.payloads import decode
from oona.streams import Stream
from tamiyo_bus.reports.records import Ack
from tamiyo_bus.reports.reporter import FieldReporter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliverySettings:
    ack_group: str = "tamiyo-acks"
    consumer_name: str = "tamiyo"
    publish_batch_max_reports: int = 64
    idle_poll_ms: float = 500.0
    bus_failure_backoff_base_ms: float = 100.0
    bus_failure_backoff_max_ms: float = 5_000.0


def decode_ack(payload: bytes) -> pb.FieldReportAck:
    """The FieldReportAck in `payload`; RejectedMessage when it is not one with a
    report id (refused at once and dead-lettered, never retried)."""
    ack = decode(pb.FieldReportAck, payload)
    if not ack.report_id:
        raise RejectedMessage("malformed_payload", "ack without a report id")
    return ack


class ReportDelivery:
    """Publishes due reports and applies acks; `run` until a stop event is set."""

    def __init__(
        self,
        reporter: FieldReporter,
        bus: Bus,
        keyring: Keyring,
        settings: DeliverySettings | None = None,
    ) -> None:
        self.reporter = reporter
        self.book = reporter.book
        self.bus = bus
        self.settings = settings or DeliverySettings()
        self.metrics = reporter.metrics
        self._wake = asyncio.Event()
        self._failures = 0
        subscription = Subscription(
            group=self.settings.ack_group,
            consumer=self.settings.consumer_name,
            streams=(Stream.FIELD_REPORT_ACKS,),
            accepted_types=frozenset({pb.MESSAGE_TYPE_FIELD_REPORT_ACK}),
        )
        self.acks = Consumer(bus, subscription, self._on_ack, keyring)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish and take acks until `stop` is set; outages are waited out."""
        loop = asyncio.get_running_loop()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self._wake.set)

        self.book.on_change = wake
        try:
            async with asyncio.TaskGroup() as tasks:  # one failing stops the others
                tasks.create_task(self._wake_on(stop))
                tasks.create_task(self._publish_loop(stop))
                tasks.create_task(self.acks.run(stop))
        finally:
            self.book.on_change = lambda: None

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _publish_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            if await self.publish_due() > 0:
                continue
            wait = self.book.seconds_until_due()
            idle = self.settings.idle_poll_ms / 1000.0
            timeout = idle if wait is None else min(wait, idle)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _failure_backoff_s(self) -> float:
        s = self.settings
        return backoff_s(
            self._failures,
            base_s=s.bus_failure_backoff_base_ms / 1000.0,
            max_s=s.bus_failure_backoff_max_ms / 1000.0,
        )

    async def publish_due(self) -> int:
        """One round: park reports out of attempts, publish those due; returns how many
        the bus accepted (0 after a failed publish, which is counted, not retried here)."""
        publish, park = self.book.take_due(self.settings.publish_batch_max_reports)
        if park:
            try:
                await asyncio.to_thread(self.reporter.park, park)
            except OSError:  # the log could not take the PARK records: try again later
                self.metrics.inc("reports_park_failed", len(park))
                log.exception("parking %d field reports failed", len(park))
                self.book.requeue([e.report_id for e in park], self._failure_backoff_s())
        if not publish:
            return 0
        ids = [entry.report_id for entry in publish]
        messages = [
            Outgoing(
                pb.MESSAGE_TYPE_FIELD_REPORT,
                entry.payload,
                priority=cast("pb.MessagePriority.ValueType", entry.priority),
                stream=Stream.FIELD_REPORTS,
            )
            for entry in publish
        ]
        try:
            await self.bus.publish_many(
                messages, batch_size=self.settings.publish_batch_max_reports
            )
        except (OonaError, RedisError) as exc:  # unreachable, full, or an error reply
            self._failures += 1
            delay_s = self._failure_backoff_s()
            self.book.requeue(ids, delay_s)
            self.metrics.inc("reports_publish_failed", len(ids), reason=type(exc).__name__)
            log.warning(
                "publishing %d field reports failed (%s); again in %.2fs", len(ids), exc, delay_s
            )
            return 0
        except BaseException:
            self.book.requeue(ids, 0.0)
            raise
        self._failures = 0
        self.book.published(ids)
        self.metrics.inc("reports_published", len(ids))
        self.metrics.inc("reports_republished", sum(1 for e in publish if e.attempts > 0))
        return len(ids)

    async def _on_ack(self, delivery: Delivery) -> None:
        ack = decode_ack(delivery.envelope.payload)
        record = Ack(ack.report_id, ack.acked_at_ns or time.time_ns(), ack.consumer)
        try:
            retired = await asyncio.to_thread(self.reporter.record_acks, [record])
        except OSError:  # the log cannot take it (disk full): the report is published again
            self.metrics.inc("reports_acks_unrecorded")
            log.warning("ack of field report %s not recorded: the log refused it; the "
                        "report stays pending and is published again", ack.report_id)  # fmt: skip
            return
        if not retired:
            self.metrics.inc("reports_acks_unmatched")
