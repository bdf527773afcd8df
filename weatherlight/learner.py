"""Simic's learner wired to the bus: its own client signing with Simic's key, its
telemetry (one gauge per figure of every update and candidate, source ``simic``) and,
under Weatherlight, a supervised service whose health detail says what it waits for.

The learner signs PolicyUpdates and its telemetry with Simic's key, never
Weatherlight's (whose role may not publish policies), so the service opens its own bus
client rather than the supervisor's.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Protocol

from leyline_vocab.roles import SOURCE_SIMIC
from leyline_vocab.telemetry import (
    LABEL_OUTCOME,
    LABEL_STATE,
    METRIC_LEARNER_APPROX_KL,
    METRIC_LEARNER_CANDIDATES,
    METRIC_LEARNER_CLIP_FRACTION,
    METRIC_LEARNER_ENTROPY,
    METRIC_LEARNER_EXPERIENCE,
    METRIC_LEARNER_EXPLAINED_VARIANCE,
    METRIC_LEARNER_GRAD_NORM,
    METRIC_LEARNER_LEARNING_RATE,
    METRIC_LEARNER_POLICY_LOSS,
    METRIC_LEARNER_POLICY_VERSION,
    METRIC_LEARNER_REJECTED_IN_ROW,
    METRIC_LEARNER_REPLAY_FILL,
    METRIC_LEARNER_UPDATES,
    METRIC_LEARNER_VALUE_LOSS,
)
from oona.bus import Bus
from oona.events import EventSink
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from producers.sinks import TelemetryMetricsSink
from producers.telemetry import TelemetryProducer
from tamiyo_bus.learning.learner import PPOUpdateStats
from tamiyo_bus.simic.learner import LearnerSink, LearnerStats
from tamiyo_bus.simic.service import LearnerService
from tamiyo_bus.simic.settings import LearnerSettings
from weatherlight.supervisor import ServiceContext, ServiceRun

LEARNER = "learner"
ENV_SIMIC_SIGNING_KEY_FILE = "TAMIYO_SIMIC_SIGNING_KEY_FILE"

UPDATE_GAUGES: dict[str, Callable[[PPOUpdateStats], float]] = {
    METRIC_LEARNER_POLICY_LOSS: lambda u: u.policy_loss,
    METRIC_LEARNER_VALUE_LOSS: lambda u: u.value_loss,
    METRIC_LEARNER_ENTROPY: lambda u: u.entropy,
    METRIC_LEARNER_APPROX_KL: lambda u: u.approx_kl,
    METRIC_LEARNER_CLIP_FRACTION: lambda u: u.clip_fraction,
    METRIC_LEARNER_EXPLAINED_VARIANCE: lambda u: u.explained_variance,
    METRIC_LEARNER_LEARNING_RATE: lambda u: u.learning_rate,
    METRIC_LEARNER_GRAD_NORM: lambda u: u.grad_norm,
}


class GaugeSink(Protocol):
    def set_gauge(self, name: str, value: float, **labels: str) -> None: ...


def finite_gauges(metrics: GaugeSink) -> GaugeSink:
    """``metrics`` leaving out non-finite figures (the losses of an update that applied
    no step, a lag before anything was learnt): a gauge keeps its last real value."""

    class Finite:
        def set_gauge(self, name: str, value: float, **labels: str) -> None:
            if math.isfinite(value):
                metrics.set_gauge(name, value, **labels)

    return Finite()


def learner_gauges(metrics: GaugeSink) -> LearnerSink:
    """A learner sink setting one gauge per figure (non-finite ones left out)."""
    gauge = finite_gauges(metrics).set_gauge

    def emit(stats: LearnerStats) -> None:
        if stats.ppo is not None:
            for name, figure in UPDATE_GAUGES.items():
                gauge(name, float(figure(stats.ppo)))
        p = stats.progress
        gauge(METRIC_LEARNER_UPDATES, p.updates)
        gauge(METRIC_LEARNER_POLICY_VERSION, p.running_version)
        gauge(METRIC_LEARNER_REPLAY_FILL, stats.replay_fill)
        gauge(METRIC_LEARNER_REJECTED_IN_ROW, p.rejected_in_row)
        for outcome, count in (
            ("published", p.candidates_published),
            ("rejected", p.candidates_rejected),
            ("deferred", p.candidates_deferred),
        ):
            gauge(METRIC_LEARNER_CANDIDATES, count, **{LABEL_OUTCOME: outcome})
        for state, count in stats.experience.items():
            gauge(METRIC_LEARNER_EXPERIENCE, count, **{LABEL_STATE: state})

    return emit


@asynccontextmanager
async def learner_on_bus(
    oona: OonaSettings,
    keyring: Keyring,
    signer: Signer,
    settings: LearnerSettings,
    *,
    events: EventSink | None = None,
) -> AsyncIterator[tuple[LearnerService, TelemetryProducer]]:
    """The learner service on a bus client of Simic's, with its telemetry producer;
    everything closed on exit."""
    bus = Bus.connect(oona, signer, source=SOURCE_SIMIC)
    producer = TelemetryProducer(bus, source=SOURCE_SIMIC)
    try:
        await producer.start()
        sink = learner_gauges(TelemetryMetricsSink(producer))
        service = await asyncio.to_thread(
            LearnerService.open, bus, keyring, signer, settings, events=events, sink=sink
        )
        try:
            yield service, producer
        finally:
            service.close()
    finally:
        await producer.stop()
        await bus.close()


def learner_service(settings: LearnerSettings, signer: Signer) -> ServiceRun:
    """Simic's learner under Weatherlight: Simic's key signs its updates and telemetry,
    its events join the services' events, its health detail joins /healthz."""

    async def run(context: ServiceContext) -> None:
        named = replace(settings, consumer=context.consumer_name)
        async with learner_on_bus(
            context.oona, context.keyring, signer, named, events=context.events
        ) as (service, _):
            context.supervisor.details[context.name] = service.health
            try:
                await service.run(context.stop)
            finally:
                context.supervisor.details.pop(context.name, None)

    return run
