"""Weatherlight's supervisor: runs named async services and restarts them with backoff.

A service is an async function of a ServiceContext that runs until the context's `stop`
event is set. When it raises, or returns while the system is not stopping, it is
restarted after a backoff that doubles per consecutive crash (with jitter, capped) and
starts over once a run lasted `stable_after_s`. Services share nothing but the bus;
a restarted service uses the same consumer name, so its pending entries are taken back
and processed first (Oona's consumer does that on start).

`system_mode` is OPERATIONAL while every service runs and none crashed in the last
`degraded_hold_s`; DEGRADED otherwise. Each service's view says what it waits for
(`waiting_for`: the server, for a service on the bus that cannot reach it), and any
other state the service reports. Shutdown sets `stop`, lets services finish
their in-flight work and ack it for up to `shutdown_grace_s`, then cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consumers.nissa.health import ComponentStatus
from oona.backoff import Backoff
from oona.bus import Bus
from oona.events import EventSink
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from weatherlight.events import ServiceEvents, forwarder

log = logging.getLogger(__name__)


class ServiceState(StrEnum):
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class SystemMode(StrEnum):
    OPERATIONAL = "operational"
    DEGRADED = "degraded"


def describe(exc: BaseException) -> str:
    """What went wrong, for /healthz: the errors inside a task group (a service's
    component that lost one of its tasks), not the group's generic message."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class SupervisorSettings:
    restart_backoff_base_ms: float = 200.0
    restart_backoff_max_ms: float = 30_000.0
    stable_after_s: float = 60.0
    degraded_hold_s: float = 10.0
    shutdown_grace_s: float = 10.0


@dataclass(frozen=True)
class ServiceContext:
    """What a service gets: its name, the bus settings and keys, the stop signal, the
    supervisor (to report an endpoint or read the system's health), and the sink its
    components emit events into (rejections among them; forwarded to Nissa)."""

    name: str
    instance: str
    oona: OonaSettings
    signer: Signer
    keyring: Keyring
    stop: asyncio.Event
    supervisor: Supervisor
    events: EventSink

    @property
    def consumer_name(self) -> str:
        """Stable across restarts of this instance, so pending entries are taken back."""
        return f"{self.instance}-{self.name}"

    def connect(self) -> Bus:
        """A bus client of its own for this run of the service (close it on exit); the
        service's health says what it waits for while the server does not answer."""
        bus = Bus.connect(self.oona, self.signer, source=f"weatherlight.{self.name}")
        self.report_status(lambda: {"waiting_for": bus.io.waiting_for})
        return bus

    def report_status(self, source: StatusSource) -> None:
        """Show what `source()` returns in this service's health (`waiting_for` and any
        other state); asked on every health request, so it must be quick."""
        self.supervisor.status[self.name].reported = source


ServiceRun = Callable[[ServiceContext], Awaitable[None]]
StatusSource = Callable[[], Mapping[str, object]]


def _nothing_reported() -> Mapping[str, object]:
    return {}


class BusComponent(Protocol):
    """A component that consumes or produces on the bus until told to stop."""

    async def run(self, stop: asyncio.Event) -> None: ...


ComponentFactory = Callable[[Bus, ServiceContext], AbstractAsyncContextManager[BusComponent]]


def bus_service(build: ComponentFactory) -> ServiceRun:
    """The one shape of a service on the bus: each run opens a client of its own,
    builds the component on it (entering whatever the factory's context holds, such as
    a store), runs it until stop, and closes everything however the run ends."""

    async def run(context: ServiceContext) -> None:
        bus = context.connect()
        try:
            async with build(bus, context) as component:
                await component.run(context.stop)
        finally:
            await bus.close()

    return run


@dataclass(frozen=True)
class ServiceSpec:
    """A registry entry: a name and the coroutine function that runs the service."""

    name: str
    run: ServiceRun


@dataclass
class ServiceStatus:
    name: str
    state: ServiceState = ServiceState.STOPPED
    starts: int = 0
    restarts: int = 0
    last_error: str = ""
    started_s: float = 0.0
    crashed_s: float | None = None
    reported: StatusSource = _nothing_reported

    def view(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "starts": self.starts,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "waiting_for": "",
            **self.reported(),
        }


@dataclass
class Supervisor:
    specs: Sequence[ServiceSpec]
    instance: str
    oona: OonaSettings
    signer: Signer
    keyring: Keyring
    settings: SupervisorSettings = field(default_factory=SupervisorSettings)
    clock: Callable[[], float] = time.monotonic
    endpoints: dict[str, str] = field(default_factory=dict)
    events: ServiceEvents = field(default_factory=ServiceEvents)
    # A running service's own account of itself (what it waits for), shown in /healthz.
    details: dict[str, Callable[[], Mapping[str, object]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [spec.name for spec in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique: {names}")
        self.status = {spec.name: ServiceStatus(spec.name) for spec in self.specs}
        self.stopping = False
        self._changed = asyncio.Condition()

    # -------------------------------------------------------------- status

    @property
    def system_mode(self) -> SystemMode:
        now = self.clock()
        for status in self.status.values():
            if status.state is not ServiceState.RUNNING and not self.stopping:
                return SystemMode.DEGRADED
            if (
                status.crashed_s is not None
                and now - status.crashed_s < self.settings.degraded_hold_s
            ):
                return SystemMode.DEGRADED
        return SystemMode.OPERATIONAL

    def health(self) -> ComponentStatus:
        """Weatherlight as a component of Nissa's /healthz."""
        mode = self.system_mode
        services = {name: s.view() for name, s in self.status.items()}
        for name, describe in list(self.details.items()):
            services[name]["detail"] = describe()
        return ComponentStatus(
            "weatherlight",
            mode is SystemMode.OPERATIONAL,
            {"system_mode": mode.value, "services": services},
        )

    async def wait_until(
        self, predicate: Callable[[Supervisor], bool], timeout_s: float = 10.0
    ) -> None:
        """Wait until `predicate(self)` holds, re-checked on every state change."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: predicate(self)), timeout=timeout_s
            )

    async def publish_endpoint(self, name: str, url: str) -> None:
        """Record where a service can be reached (Nissa's HTTP address)."""
        self.endpoints[name] = url
        async with self._changed:
            self._changed.notify_all()

    async def _set(self, status: ServiceStatus, state: ServiceState) -> None:
        status.state = state
        async with self._changed:
            self._changed.notify_all()

    # ----------------------------------------------------------------- run

    async def run(self, stop: asyncio.Event) -> None:
        """Run every service until `stop` is set, then shut them down gracefully."""
        tasks = [
            asyncio.create_task(self._supervise(spec, stop), name=f"weatherlight-{spec.name}")
            for spec in self.specs
        ]
        try:
            await stop.wait()
        finally:
            self.stopping = True
            stop.set()
            _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_s)
            for task in pending:
                log.warning("service %s did not stop in time; cancelling it", task.get_name())
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self, spec: ServiceSpec, stop: asyncio.Event) -> None:
        status = self.status[spec.name]
        context = ServiceContext(
            spec.name, self.instance, self.oona, self.signer, self.keyring, stop, self,
            self.events,
        )  # fmt: skip
        s = self.settings
        backoff = Backoff(s.restart_backoff_base_ms / 1000.0, s.restart_backoff_max_ms / 1000.0)
        while not stop.is_set():
            status.starts += 1
            status.started_s = self.clock()
            await self._set(status, ServiceState.RUNNING)
            try:
                await spec.run(context)
            except Exception as exc:
                log.exception("service %s crashed", spec.name)
                status.last_error = describe(exc)
            else:
                if stop.is_set():
                    break
                status.last_error = "returned before shutdown"
                log.error("service %s returned before shutdown", spec.name)
            if self.clock() - status.started_s >= self.settings.stable_after_s:
                backoff.reset()
            status.crashed_s = self.clock()
            status.restarts += 1
            await self._set(status, ServiceState.BACKOFF)
            delay_s = backoff.next_s()
            log.warning("restarting %s in %.2f s", spec.name, delay_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay_s)
        await self._set(status, ServiceState.STOPPED)


def event_forwarder_service() -> ServiceRun:
    """The ``events`` service: publishes the supervised services' events as telemetry."""

    def build(bus: Bus, context: ServiceContext) -> AbstractAsyncContextManager[BusComponent]:
        return forwarder(bus, context.supervisor.events)

    return bus_service(build)


class SupervisorCollector(Collector):
    """Weatherlight's state for Prometheus."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        supervisor = self.supervisor
        mode = GaugeMetricFamily(
            "weatherlight_system_mode", "1 for the current system mode", labels=["mode"]
        )
        current = supervisor.system_mode
        for option in SystemMode:
            mode.add_metric([option.value], 1.0 if option is current else 0.0)
        up = GaugeMetricFamily(
            "weatherlight_service_up", "1 while a supervised service runs", labels=["service"]
        )
        restarts = CounterMetricFamily(
            "weatherlight_service_restarts", "Restarts of a supervised service", labels=["service"]
        )
        for name, status in supervisor.status.items():
            up.add_metric([name], 1.0 if status.state is ServiceState.RUNNING else 0.0)
            restarts.add_metric([name], status.restarts)
        yield from (mode, up, restarts)
