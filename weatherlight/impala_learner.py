"""The V-trace learner wired to the bus: its own client signing with Simic's key, its
telemetry (one gauge per figure after every update, source ``simic``, the lead rank
only) and, under Weatherlight, the supervised ``learner`` service in place of Simic's
PPO learner (``WeatherlightSettings.impala``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import torch

from leyline_vocab.roles import SOURCE_SIMIC
from leyline_vocab.telemetry import (
    LABEL_OUTCOME,
    METRIC_IMPALA_BUFFER_FILL,
    METRIC_IMPALA_ENTROPY,
    METRIC_IMPALA_GRAD_NORM,
    METRIC_IMPALA_LAG_P50,
    METRIC_IMPALA_LAG_P99,
    METRIC_IMPALA_LEARNING_RATE,
    METRIC_IMPALA_MEAN_RHO,
    METRIC_IMPALA_POLICIES,
    METRIC_IMPALA_POLICY_LOSS,
    METRIC_IMPALA_POLICY_VERSION,
    METRIC_IMPALA_SEGMENTS,
    METRIC_IMPALA_TOTAL_LOSS,
    METRIC_IMPALA_TRANSITIONS,
    METRIC_IMPALA_UPDATES,
    METRIC_IMPALA_VALUE_LOSS,
)
from oona.bus import Bus
from oona.events import EventSink
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from producers.sinks import TelemetryMetricsSink
from producers.telemetry import TelemetryProducer
from tamiyo_bus.impala.distributed import RankInfo
from tamiyo_bus.impala.learner import ImpalaUpdateStats
from tamiyo_bus.impala.service import ImpalaLearnerService, start_learner
from tamiyo_bus.impala.settings import ImpalaSettings
from tamiyo_bus.impala.telemetry import ImpalaReport, ImpalaSink
from weatherlight.learner import GaugeSink, finite_gauges
from weatherlight.supervisor import ServiceContext, ServiceRun

UPDATE_GAUGES: dict[str, Callable[[ImpalaUpdateStats], float]] = {
    METRIC_IMPALA_TOTAL_LOSS: lambda u: u.total_loss,
    METRIC_IMPALA_POLICY_LOSS: lambda u: u.policy_loss,
    METRIC_IMPALA_VALUE_LOSS: lambda u: u.value_loss,
    METRIC_IMPALA_ENTROPY: lambda u: u.entropy,
    METRIC_IMPALA_MEAN_RHO: lambda u: u.mean_rho,
    METRIC_IMPALA_GRAD_NORM: lambda u: u.grad_norm,
    METRIC_IMPALA_LEARNING_RATE: lambda u: u.learning_rate,
}


def impala_gauges(metrics: GaugeSink) -> ImpalaSink:
    """A sink setting one gauge per figure of a report (non-finite ones left out)."""
    gauge = finite_gauges(metrics).set_gauge

    def emit(report: ImpalaReport) -> None:
        if report.update is not None:
            for name, figure in UPDATE_GAUGES.items():
                gauge(name, float(figure(report.update)))
        p = report.progress
        gauge(METRIC_IMPALA_UPDATES, p.updates)
        gauge(METRIC_IMPALA_TRANSITIONS, p.transitions_learnt)
        gauge(METRIC_IMPALA_POLICY_VERSION, p.running_version)
        gauge(METRIC_IMPALA_BUFFER_FILL, report.buffer_fill)
        gauge(METRIC_IMPALA_LAG_P50, report.lag_p50_s)
        gauge(METRIC_IMPALA_LAG_P99, report.lag_p99_s)
        for outcome, count in report.segments.items():
            gauge(METRIC_IMPALA_SEGMENTS, count, **{LABEL_OUTCOME: outcome})
        for outcome, count in (
            ("published", report.policies_published),
            ("rejected", p.candidates_rejected),
            ("deferred", p.candidates_deferred),
        ):
            gauge(METRIC_IMPALA_POLICIES, count, **{LABEL_OUTCOME: outcome})

    return emit


@asynccontextmanager
async def impala_on_bus(
    oona: OonaSettings,
    keyring: Keyring,
    signer: Signer,
    settings: ImpalaSettings,
    *,
    rank: RankInfo | None = None,
    device: torch.device | None = None,
    events: EventSink | None = None,
) -> AsyncIterator[ImpalaLearnerService]:
    """The V-trace learner service (one rank of it) on a bus client of Simic's, the lead
    rank's with its telemetry producer; everything closed on exit. The client reads at
    most a batch of segments at a time: one read of the server's default size would
    hand one rank everything waiting and leave the others starved."""
    rank = rank or RankInfo()
    device = device or torch.device("cpu")
    reading = replace(oona, read_batch_size=settings.batch_segments)
    bus = Bus.connect(reading, signer, source=SOURCE_SIMIC)
    producer = TelemetryProducer(bus, source=SOURCE_SIMIC) if rank.lead else None
    try:
        if producer is not None:
            await producer.start()
        sink = impala_gauges(TelemetryMetricsSink(producer)) if producer is not None else None
        learner = await asyncio.to_thread(start_learner, settings, rank, device, events)
        service = ImpalaLearnerService(
            bus, settings, signer, keyring=keyring, rank=rank, learner=learner,
            events=events, device=device, sink=sink,
        )  # fmt: skip
        try:
            yield service
        finally:
            service.close()
    finally:
        if producer is not None:
            await producer.stop()
        await bus.close()


def impala_learner_service(settings: ImpalaSettings, signer: Signer) -> ServiceRun:
    """The V-trace learner under Weatherlight (one process, no torchrun): Simic's key
    signs its updates and telemetry, its events join the services' events."""

    async def run(context: ServiceContext) -> None:
        named = replace(settings, consumer=context.consumer_name)
        async with impala_on_bus(
            context.oona, context.keyring, signer, named, events=context.events
        ) as service:
            context.supervisor.details[context.name] = service.health
            try:
                await service.run(context.stop)
            finally:
                context.supervisor.details.pop(context.name, None)

    return run
