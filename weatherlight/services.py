"""The registry of services Weatherlight supervises, and Weatherlight itself.

Each entry is a `ServiceSpec(name, run)`; adding a service is one more line in
`default_services`, with a run function of the same shape as `hub_service` below: open
a bus client from the context, run the component until `context.stop` is set, close
the client. Every component emits its events (its consumers' rejections) into
`context.events`, and the ``events`` service forwards them to Nissa as telemetry.
Simic's field-report intake runs when its settings say where its store is (`serve`
puts it under TAMIYO_DATA_DIR, the demo in the run directory); Simic's learner when its
settings are given, with Simic's signing key (weatherlight.learner), or the V-trace
learner under the same name when ``impala`` is set too (weatherlight.impala_learner).
Tamiyo's policy-update
listener is not here: it swaps the policy of the process that runs the step path, so
it runs there (the demo adds it to its own Weatherlight).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field, replace

from prometheus_client.registry import Collector

from consumers.hub.service import HubSettings, TelemetryHub
from consumers.nissa.service import Nissa, NissaSettings
from consumers.simic import ReportStore, SimicIntake, SimicSettings
from oona.bus import Bus
from oona.keyfiles import KeyConfigError
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from tamiyo_bus.impala.settings import ImpalaSettings
from tamiyo_bus.simic.settings import LearnerSettings
from weatherlight.drain import DrainCollector, DrainStats, drain_service
from weatherlight.events import EVENTS
from weatherlight.impala_learner import impala_learner_service
from weatherlight.learner import ENV_SIMIC_SIGNING_KEY_FILE, LEARNER, learner_service
from weatherlight.server_keeper import ServerKeeperSettings
from weatherlight.supervisor import (
    BusComponent,
    ServiceContext,
    ServiceRun,
    ServiceSpec,
    ServiceState,
    Supervisor,
    SupervisorCollector,
    SupervisorSettings,
    bus_service,
    event_forwarder_service,
)

NISSA = "nissa"
SIMIC = "simic"


@dataclass(frozen=True)
class WeatherlightSettings:
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    hub: HubSettings = field(default_factory=HubSettings)
    nissa: NissaSettings = field(default_factory=NissaSettings)
    simic: SimicSettings | None = None  # None: no field-report intake in this process
    learner: LearnerSettings | None = None  # None: no learner in this process
    # Set (with learner set): the `learner` service is the V-trace learner, not PPO.
    impala: ImpalaSettings | None = None
    server_keeper: ServerKeeperSettings = field(default_factory=ServerKeeperSettings)


def hub_service(settings: HubSettings) -> ServiceRun:
    def build(bus: Bus, context: ServiceContext) -> AbstractAsyncContextManager[BusComponent]:
        return nullcontext(
            TelemetryHub(
                bus,
                context.keyring,
                settings,
                consumer_name=context.consumer_name,
                events=context.events,
            )
        )

    return bus_service(build)


def nissa_service(settings: NissaSettings, collectors: Sequence[Collector] = ()) -> ServiceRun:
    """Nissa, reporting Weatherlight's health in /healthz and its state in /metrics."""

    @asynccontextmanager
    async def build(bus: Bus, context: ServiceContext) -> AsyncIterator[Nissa]:
        nissa = Nissa(
            bus,
            context.keyring,
            settings,
            consumer_name=context.consumer_name,
            components=(context.supervisor,),
            collectors=(SupervisorCollector(context.supervisor), *collectors),
            events=context.events,
        )
        http = nissa.start_http()
        await context.supervisor.publish_endpoint(NISSA, http.url if http else "")
        yield nissa

    return bus_service(build)


def simic_service(settings: SimicSettings) -> ServiceRun:
    """Simic's intake: stores field reports durably, then acks them."""

    @asynccontextmanager
    async def build(bus: Bus, context: ServiceContext) -> AsyncIterator[SimicIntake]:
        named = replace(settings, consumer=context.consumer_name)
        store = ReportStore.for_intake(named)
        try:
            yield SimicIntake(bus, context.keyring, store, named, events=context.events)
        finally:
            store.close()

    return bus_service(build)


def default_services(
    settings: WeatherlightSettings, *, simic_signer: Signer | None = None
) -> list[ServiceSpec]:
    """The services ``settings`` asks for; the learner needs ``simic_signer`` (Simic's
    key: Weatherlight's own may not sign policies)."""
    drain = DrainStats()
    specs = [
        ServiceSpec(EVENTS, event_forwarder_service()),
        ServiceSpec("drain", drain_service(drain)),
        ServiceSpec("telemetry-hub", hub_service(settings.hub)),
        ServiceSpec(NISSA, nissa_service(settings.nissa, (DrainCollector(drain),))),
    ]
    if settings.simic is not None:
        specs.append(ServiceSpec(SIMIC, simic_service(settings.simic)))
    if settings.learner is not None:
        if simic_signer is None:
            raise KeyConfigError(
                ENV_SIMIC_SIGNING_KEY_FILE, "the learner signs with Simic's key: set it"
            )
        run = (
            learner_service(settings.learner, simic_signer)
            if settings.impala is None
            else impala_learner_service(settings.impala, simic_signer)
        )
        specs.append(ServiceSpec(LEARNER, run))
    return specs


class Weatherlight:
    """The supervisor running `specs`, started and stopped as a unit (the `serve`
    command, the demo and tests)."""

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        *,
        oona: OonaSettings,
        signer: Signer,
        keyring: Keyring,
        instance: str,
        settings: SupervisorSettings | None = None,
    ) -> None:
        self.supervisor = Supervisor(
            specs, instance, oona, signer, keyring, settings or SupervisorSettings()
        )
        self.stop_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def status_url(self) -> str | None:
        return self.supervisor.endpoints.get(NISSA) or None

    async def run(self) -> None:
        """Supervise until `stop_event` is set (by `stop` or a signal handler)."""
        await self.supervisor.run(self.stop_event)

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start supervising in the background; returns once every service runs."""
        self._task = asyncio.create_task(self.run(), name="weatherlight")
        await self.supervisor.wait_until(
            lambda s: (
                all(st.state is ServiceState.RUNNING for st in s.status.values())
                and (NISSA not in s.status or NISSA in s.endpoints)
            ),
            timeout_s,
        )

    async def stop(self) -> None:
        """Graceful shutdown: services finish in-flight work, ack it and stop."""
        self.stop_event.set()
        if self._task is not None:
            await self._task
            self._task = None
