"""Nissa, the observability service: consumes `telemetry.aggregated` (group ``nissa``),
keeps metrics, alerts and run status, and serves them over HTTP:

- ``/metrics``: Prometheus text: the telemetry, Nissa's counters, the bus's streams,
  groups and dead letters (oona.exporter's collector), and any collector a
  supervisor adds;
- ``/healthz``: JSON, 200 when healthy, 503 with the problems otherwise;
- ``/alerts``: JSON: firing, pending and recently resolved alerts;
- ``/api/status``: JSON for the status page; ``/`` and ``/status``: the page.

Besides consuming, a ticker evaluates time-driven alert transitions every
`tick_interval_s` and samples the bus's group lag every `lag_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson
import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from consumers.nissa.health import ComponentStatus, HealthComponent, LagSample
from consumers.nissa.http import HttpServer, Response
from consumers.nissa.page import STATUS_PAGE
from consumers.nissa.rules import Alert, Clock
from consumers.nissa.state import NissaCollector, NissaState, StateSettings
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.connection import open_sync_redis, resolve_url
from oona.consumer import Consumer, Delivery, Subscription
from oona.errors import BusUnavailable
from oona.events import EventSink
from oona.exporter import BusCollector
from oona.keys import Keyring
from oona.payloads import decode
from oona.streams import Stream

log = logging.getLogger(__name__)

NISSA_GROUP = "nissa"
JSON = "application/json"


@dataclass(frozen=True)
class NissaSettings:
    """Nissa's service settings; `port` None runs no HTTP server, 0 picks a free one."""

    group: str = NISSA_GROUP
    host: str = "127.0.0.1"
    port: int | None = 9108
    tick_interval_s: float = 1.0
    lag_interval_s: float = 2.0
    state: StateSettings = field(default_factory=StateSettings)


class Nissa:
    """One Nissa instance; `consumer_name` must be stable across restarts."""

    def __init__(
        self,
        bus: Bus,
        keyring: Keyring,
        settings: NissaSettings | None = None,
        *,
        consumer_name: str = "nissa-1",
        clock: Clock = time.time,
        components: Sequence[HealthComponent] = (),
        collectors: Sequence[Collector] = (),
        events: EventSink | None = None,
    ) -> None:
        self.settings = settings or NissaSettings()
        self.bus = bus
        self.components = tuple(components)
        self.collectors = tuple(collectors)
        self.state = NissaState(self.settings.state, clock)
        self.http: HttpServer | None = None
        self._bus_client: redis.Redis | None = None
        subscription = Subscription(
            group=self.settings.group,
            consumer=consumer_name,
            streams=(Stream.TELEMETRY_AGGREGATED,),
            accepted_types=frozenset({pb.MESSAGE_TYPE_TELEMETRY_AGGREGATE}),
        )
        self.consumer = Consumer(bus, subscription, self._handle, keyring, events=events)

    def on_alert(self, listener: Callable[[Alert], None]) -> None:
        """Call `listener` (on the consuming loop) whenever an alert starts firing."""
        self.state.alerts.listeners.append(listener)

    async def _handle(self, delivery: Delivery) -> None:
        self.state.ingest(decode(pb.TelemetryAggregate, delivery.envelope.payload))

    # ------------------------------------------------------------ sampling

    async def sample_lag(self) -> LagSample:
        """Group lag of every stream, as /healthz and the status page show it, and how
        many records each dead-letter stream ever received (for `dead_letters_growing`)."""
        now = self.state.clock()
        try:
            lag = {stream.value: await self.bus.group_lag(stream) for stream in Stream}
            added = await self.bus.dead_letters_added([stream.value for stream in Stream])
        except BusUnavailable as exc:
            sample = LagSample(now, error=str(exc))
        else:
            sample = LagSample(now, {s: g for s, g in lag.items() if g})
            self.state.set_dead_letters({s.value: added.get(s.value, 0) for s in Stream})
        self.state.set_lag(sample)
        return sample

    async def _tick(self, done: asyncio.Event) -> None:
        next_lag = 0.0
        while not done.is_set():
            self.state.tick()
            if time.monotonic() >= next_lag:
                await self.sample_lag()
                next_lag = time.monotonic() + self.settings.lag_interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=self.settings.tick_interval_s)

    # ---------------------------------------------------------------- HTTP

    def component_statuses(self) -> list[ComponentStatus]:
        return [component.health() for component in self.components]

    def routes(self, registry: CollectorRegistry) -> dict[str, Callable[[], Response]]:
        def metrics() -> Response:
            return Response(200, CONTENT_TYPE_LATEST, generate_latest(registry))

        def healthz() -> Response:
            verdict, detail = self.state.health(self.component_statuses())
            return Response(200 if verdict.healthy else 503, JSON, orjson.dumps(detail))

        def alerts() -> Response:
            return Response(200, JSON, orjson.dumps(self.state.alerts_view()))

        def status() -> Response:
            view = self.state.status_view(self.component_statuses())
            return Response(200, JSON, orjson.dumps(view))

        def page() -> Response:
            return Response(200, "text/html; charset=utf-8", STATUS_PAGE.encode())

        return {
            "/metrics": metrics,
            "/healthz": healthz,
            "/alerts": alerts,
            "/api/status": status,
            "/": page,
            "/status": page,
        }

    def start_http(self) -> HttpServer | None:
        """Start the HTTP server (when a port is configured); `self.http.url` is its
        address. The bus collector reads the server with its own blocking client, from
        the scrape's thread."""
        if self.settings.port is None:
            return None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(NissaCollector(self.state))
        self._bus_client = open_sync_redis(resolve_url(self.bus.settings), self.bus.settings)
        registry.register(BusCollector(self._bus_client, self.bus.settings.key_prefix))
        for collector in self.collectors:
            registry.register(collector)
        self.http = HttpServer(self.settings.host, self.settings.port, self.routes(registry))
        self.http.start()
        log.info("nissa serving on %s", self.http.url)
        return self.http

    def stop_http(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self._bus_client is not None:
            self._bus_client.close()
            self._bus_client = None

    # ----------------------------------------------------------------- run

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, tick and serve until `stop` is set (the HTTP server is started here
        unless the caller started it to learn its address first)."""
        done = asyncio.Event()

        async def consume() -> None:
            try:
                await self.consumer.run(stop)
            finally:
                done.set()

        if self.http is None:
            self.start_http()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(consume(), name="nissa-consume")
                tasks.create_task(self._tick(done), name="nissa-tick")
        finally:
            self.stop_http()
