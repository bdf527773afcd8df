"""Nissa's default alerts watch what an assembled Tamiyo publishes, and fire on it: a
policy that starts failing opens the inference breaker, the run enters conservative
mode, and the gauges the risk engine publishes through its metrics sink raise the
alerts. No metric is published by hand; the rules are Nissa's defaults with their hold
times set to zero."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

from consumers.hub.service import HubSettings, TelemetryHub
from consumers.nissa.rules import DEFAULT_RULES, Alert, Sample
from consumers.nissa.service import Nissa, NissaSettings
from consumers.nissa.state import StateSettings
from leyline_vocab.schema import Labels
from leyline_vocab.telemetry import SOURCE_TAMIYO
from oona.bus import Bus
from oona.keys import Keyring, Signer
from producers.sinks import DecisionTelemetrySink, TelemetryEventSink, TelemetryMetricsSink
from producers.telemetry import TelemetryProducer
from tamiyo_bus import TamiyoSettings, build_tamiyo
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.serving import Inference, ServingPolicy
from tamiyo_bus.settings import DecisionMode, StepSettings
from tests import states
from tests.policy.helpers import SMALL, holder_for
from tests.states import StaticBlueprintCatalog
from tests.telemetry.helpers import wait_until

RUN = "alerts-run"


class FailsAfter(ServingPolicy):
    """Decides ``good`` times, then raises on every call."""

    def __init__(self, good: int) -> None:
        super().__init__(SMALL)
        self.good = good

    def decide(self, graph: PolicyGraph, **kwargs: Any) -> Inference:
        if self.good <= 0:
            raise RuntimeError("policy exploded")
        self.good -= 1
        return super().decide(graph, **kwargs)


async def test_a_breaker_opened_by_failing_inference_raises_nissas_alerts(
    bus: Bus, keyring: Keyring, signer: Signer
) -> None:
    rules = tuple(dataclasses.replace(rule, for_s=0.0) for rule in DEFAULT_RULES)
    hub = TelemetryHub(bus, keyring, HubSettings(window_ms=50), consumer_name="hub-alerts")
    nissa = Nissa(
        bus,
        keyring,
        NissaSettings(port=None, tick_interval_s=0.02, state=StateSettings(rules=rules)),
        consumer_name="nissa-alerts",
    )
    fired: list[Alert] = []
    nissa.on_alert(fired.append)
    watched: set[str] = set()
    observe = nissa.state.alerts.observe

    def recording(metric: str, labels: Labels, sample: Sample) -> None:
        watched.add(metric)
        observe(metric, labels, sample)

    nissa.state.alerts.observe = recording  # type: ignore[method-assign]
    stop = asyncio.Event()
    services = [asyncio.create_task(hub.run(stop)), asyncio.create_task(nissa.run(stop))]
    producer = TelemetryProducer(bus, source=SOURCE_TAMIYO)
    await producer.start()
    size = states.REFERENCE_SIZE
    catalogue = StaticBlueprintCatalog(states.catalogue(size))
    tamiyo = build_tamiyo(
        TamiyoSettings(StepSettings(decision_mode=DecisionMode.INLINE, step_deadline_ms=2_000.0)),
        topology=states.topology(size),
        blueprints=catalogue,
        candidates=catalogue.ids(),
        signer=Signer.generate(),
        holder=holder_for(FailsAfter(good=2)),
        telemetry=DecisionTelemetrySink(producer),
        events=TelemetryEventSink(producer, run=RUN),
        metrics=TelemetryMetricsSink(producer, run=RUN),
    ).start(prefetch_timeout_s=5.0)
    try:
        rng = random.Random(0)
        threshold = tamiyo.risk.settings.breakers.inference.failure_threshold
        for step in range(2 + threshold):
            tamiyo.evaluate_step(states.packet(size, tamiyo.builder.topology, rng, step=step))
        assert tamiyo.risk.conservative.active
        assert tamiyo.wait_idle(5.0)
        await producer.flush()

        async def both_fired() -> bool:
            return {"breaker_stuck_open", "conservative_mode_long"} <= {
                alert.name for alert in fired
            }

        await wait_until(both_fired)
    finally:
        tamiyo.close()
        await producer.stop()
        stop.set()
        await asyncio.gather(*services)
    breaker = next(alert for alert in fired if alert.name == "breaker_stuck_open")
    assert dict(breaker.labels)["breaker"] == "inference"
    tamiyos = {rule.metric for rule in DEFAULT_RULES if rule.metric.startswith("tamiyo.")}
    assert tamiyos and tamiyos <= watched  # the learner's rule: tests/simic/test_telemetry.py
