"""The demo's async side: the bus services, on one event loop in a background thread.

- Weatherlight supervises the stream drain, the telemetry hub, Nissa (status page and
  /metrics), Simic's field-report intake, Tamiyo's policy-update listener and, when
  asked (``train --env real``), Simic's learner signing with Simic's key;
- three telemetry producers (tamiyo, tolaria, kasmina) publish what the run hands them,
  each on a bus client of its own signing with its role's key;
- a forwarder turns Kasmina's per-step telemetry records into packets;
- field-report delivery publishes the reports the run's FieldReporter writes and
  retires them when Simic's acks come back.

The training thread never waits on any of this: it hands work over through bounded,
non-blocking queues (Kasmina's outbox, the producers' buffers, the field-report
queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from consumers.simic import SimicSettings
from leyline_vocab.events import BreakerName
from leyline_vocab.roles import SOURCE_SIMIC, SOURCE_WEATHERLIGHT
from leyline_vocab.telemetry import SOURCE_KASMINA, SOURCE_TAMIYO, SOURCE_TOLARIA
from oona.breaker import BreakerSettings, CircuitBreaker
from oona.bus import Bus
from oona.settings import OonaSettings
from producers.telemetry import TelemetryProducer
from tamiyo_bus.experience.publisher import TrajectoryPublisher
from tamiyo_bus.experience.segments import ExperienceSettings
from tamiyo_bus.kasmina.telemetry import TelemetryOutbox, to_packet
from tamiyo_bus.reports.delivery import ReportDelivery
from tamiyo_bus.reports.reporter import FieldReporter
from tamiyo_bus.security.policy_update import (
    PolicyHolder,
    PolicyUpdateListener,
    PolicyUpdateSettings,
    PolicyUpdateTransaction,
)
from tamiyo_bus.simic.settings import LearnerSettings
from weatherlight.demo.layout import DEMO_INSTANCE
from weatherlight.learner import LEARNER
from weatherlight.role_keys import RoleKeys
from weatherlight.services import (
    Weatherlight,
    WeatherlightSettings,
    default_services,
)
from weatherlight.settings import POLICY_VERSION_RECORD
from weatherlight.supervisor import (
    BusComponent,
    ServiceContext,
    ServiceRun,
    ServiceSpec,
    bus_service,
)

T = TypeVar("T")
START_TIMEOUT_S = 60.0
FORWARD_INTERVAL_S = 0.05


def policy_listener_service(
    holder: PolicyHolder, breaker: CircuitBreaker, settings: PolicyUpdateSettings
) -> ServiceRun:
    """Tamiyo's policy-update listener: signed PolicyUpdates swap the running policy;
    repeated rejections open ``breaker`` (the risk gate's policy-update breaker)."""

    def build(bus: Bus, context: ServiceContext) -> AbstractAsyncContextManager[BusComponent]:
        transaction = PolicyUpdateTransaction(
            holder, context.keyring, settings, metrics=bus.metrics, events=context.events,
            breaker=breaker,
        )  # fmt: skip
        return nullcontext(
            PolicyUpdateListener(
                bus, transaction, context.keyring, consumer_name=context.consumer_name
            )
        )

    return bus_service(build)


@dataclass(frozen=True)
class ServiceSettings:
    nissa_host: str = "127.0.0.1"
    nissa_port: int = 0  # 0: any free port (printed at start)
    instance: str = DEMO_INSTANCE
    # Simic's learner beside the intake (``train --env real``); None: the demo runs none
    learner: LearnerSettings | None = None


class AsyncSide:
    """Starts and stops the services; everything runs on ``self.loop``."""

    def __init__(
        self,
        *,
        oona: OonaSettings,
        keys: RoleKeys,
        run_id: str,
        run_dir: Path,
        holder: PolicyHolder,
        policy_update_breaker: BreakerSettings,
        settings: ServiceSettings | None = None,
    ) -> None:
        self.oona = oona
        self.keys = keys
        self.keyring = keys.keyring
        self.run_id = run_id
        self.run_dir = run_dir
        self.holder = holder
        self.policy_update_breaker = CircuitBreaker(
            BreakerName.POLICY_UPDATE, policy_update_breaker
        )
        self.settings = settings or ServiceSettings()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="demo-async", daemon=True)
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.bus: Bus | None = None  # Tamiyo's: her telemetry and field reports
        self.buses: dict[str, Bus] = {}
        self.weatherlight: Weatherlight | None = None
        self.producers: dict[str, TelemetryProducer] = {}
        self.outbox: TelemetryOutbox | None = None
        self.outbox_run_id = run_id
        self.forwarded = 0

    # ------------------------------------------------------------ thread plumbing

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = START_TIMEOUT_S) -> T:
        """Run ``coro`` on the services' loop and wait for it (start-up and shutdown)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    @property
    def simic_db(self) -> Path:
        return self.run_dir / "simic.sqlite3"

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Start the loop and every service; returns once all of them run."""
        self._thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        self._stop = asyncio.Event()
        for source in (SOURCE_TAMIYO, SOURCE_TOLARIA, SOURCE_KASMINA):
            bus = Bus.connect(self.oona, self.keys.signer(source), source=source)
            self.buses[source] = bus
            producer = TelemetryProducer(bus, source=source)
            await producer.start()
            self.producers[source] = producer
        self.bus = self.buses[SOURCE_TAMIYO]
        base = WeatherlightSettings()
        nissa = replace(base.nissa, host=self.settings.nissa_host, port=self.settings.nissa_port)
        settings = replace(
            base,
            nissa=nissa,
            simic=SimicSettings(db_path=self.simic_db),
            learner=self.settings.learner,
        )
        specs = [
            *default_services(settings, simic_signer=self.keys.signer(SOURCE_SIMIC)),
            ServiceSpec(
                "tamiyo-policy",
                policy_listener_service(
                    self.holder,
                    self.policy_update_breaker,
                    PolicyUpdateSettings(version_record_path=self.run_dir / POLICY_VERSION_RECORD),
                ),
            ),
        ]
        self.weatherlight = Weatherlight(
            specs,
            oona=self.oona,
            signer=self.keys.signer(SOURCE_WEATHERLIGHT),
            keyring=self.keyring,
            instance=self.settings.instance,
            settings=settings.supervisor,
        )
        await self.weatherlight.start(START_TIMEOUT_S)

    @property
    def breakers(self) -> dict[BreakerName, CircuitBreaker]:
        """The breakers of what these services guard, for the risk gate to adopt: the IO
        breaker of the bus the run's telemetry and field reports use, and the breaker
        the policy-update listener counts rejections on."""
        assert self.bus is not None, "start() first"
        return {
            BreakerName.BUS_IO: self.bus.io.breaker,
            BreakerName.POLICY_UPDATE: self.policy_update_breaker,
        }

    def learner_health(self) -> Mapping[str, object] | None:
        """What Simic's learner reports of itself (None: no learner, or not started)."""
        if self.weatherlight is None:
            return None
        describe = self.weatherlight.supervisor.details.get(LEARNER)
        return describe() if describe is not None else None

    def caught_up(self, stream: str, group: str) -> bool:
        """Whether ``group`` has read and acked every entry of ``stream``."""
        assert self.bus is not None

        async def check(bus: Bus) -> bool:
            lag = await bus.group_lag(stream)
            pending = [p for p in await bus.group_positions(stream) if p.name == group]
            return lag.get(group) == 0 and all(p.lowest_pending is None for p in pending)

        return self.call(check(self.bus))

    @property
    def status_url(self) -> str | None:
        return self.weatherlight.status_url if self.weatherlight else None

    def producer(self, source: str) -> TelemetryProducer:
        return self.producers[source]

    def forward_kasmina(self, outbox: TelemetryOutbox, run_id: str) -> None:
        """Turn Kasmina's per-step records of run ``run_id`` into packets, off the step
        path (a later run's Kasmina takes the place of the earlier one's)."""
        started = self.outbox is not None
        self.outbox, self.outbox_run_id = outbox, run_id
        if not started:
            self._spawn(self._forward)

    def deliver_reports(self, reporter: FieldReporter) -> None:
        """Publish field reports and take Simic's acks until shutdown."""
        assert self.bus is not None
        delivery = ReportDelivery(reporter, self.bus, self.keyring)
        self._spawn(lambda: delivery.run(self._stop))

    def publish_experience(self, settings: ExperienceSettings) -> TrajectoryPublisher:
        """Publish Tamiyo's experience segments on the trajectories stream until
        shutdown (what is queued then is published once more)."""
        assert self.bus is not None
        publisher = TrajectoryPublisher(self.bus, settings)
        self._spawn(lambda: publisher.run(self._stop))
        return publisher

    def _spawn(self, factory: Callable[[], Awaitable[None]]) -> None:
        """Start ``factory()`` as a task on the services' loop; shutdown awaits it."""

        async def spawn() -> None:
            self._tasks.append(asyncio.ensure_future(factory()))

        self.call(spawn())

    async def _forward(self) -> None:
        producer = self.producers[SOURCE_KASMINA]
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), FORWARD_INTERVAL_S)
            assert self.outbox is not None
            for item in self.outbox.drain():
                producer.emit(to_packet(item, run_id=self.outbox_run_id))
                self.forwarded += 1

    # ------------------------------------------------------------------- stop

    def stop(self) -> None:
        """Flush and stop everything: forwarder and delivery first, then the producers
        (publishing what they buffer), then Weatherlight's services, then the loop."""
        if not self._thread.is_alive():
            return
        try:
            self.call(self._shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(START_TIMEOUT_S)

    async def _shutdown(self) -> None:
        self._stop.set()
        for task in self._tasks:
            await task
        for producer in self.producers.values():
            await producer.stop()
        if self.weatherlight is not None:
            await self.weatherlight.stop()
        for bus in self.buses.values():
            await bus.close()
