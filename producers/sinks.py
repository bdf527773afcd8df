"""Adapters from the sinks Tamiyo's components write to, onto the telemetry producer.

Tamiyo's risk engine emits events into an `oona.events.EventSink` and metrics into a
metrics sink (`inc`, `set_gauge`, as BusMetrics has); the step path hands decision
records to a telemetry sink (`publish`). Each adapter turns those calls into
TelemetryPackets of one source and run, handed to `TelemetryProducer.emit`, which
never blocks: urgent events go out at once on the emergency lane, the rest in batches.
"""

from __future__ import annotations

from typing import Protocol

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import LABEL_RUN, add_metric, decision_packet
from producers.telemetry import TelemetryProducer


class TelemetryEventSink:
    """An oona.events EventSink: one packet per event, at the event's own priority;
    the run is added to the attributes when the emitter did not set it."""

    def __init__(self, producer: TelemetryProducer, *, run: str = "") -> None:
        self.producer = producer
        self.run = run

    def emit(self, event: pb.TelemetryEvent) -> None:
        packet = pb.TelemetryPacket(level=event.level, priority=event.priority)
        added = packet.events.add()
        added.CopyFrom(event)
        if self.run and LABEL_RUN not in added.attributes:
            added.attributes[LABEL_RUN] = self.run
        self.producer.emit(packet)


class TelemetryMetricsSink:
    """A metrics sink: `inc` sends a counter increment, `set_gauge` a gauge value, each
    labelled with the run; both ride the next NORMAL batch."""

    def __init__(self, producer: TelemetryProducer, *, run: str = "") -> None:
        self.producer = producer
        self.run = run

    def _send(
        self, name: str, value: float, kind: pb.MetricKind.ValueType, labels: dict[str, str]
    ) -> None:
        if self.run:
            labels.setdefault(LABEL_RUN, self.run)
        packet = pb.TelemetryPacket()
        add_metric(packet, name, value, kind=kind, **labels)
        self.producer.emit(packet)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._send(name, amount, pb.METRIC_KIND_COUNTER, labels)

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        self._send(name, value, pb.METRIC_KIND_GAUGE, labels)


class DecisionRecord(Protocol):
    """The fields of Tamiyo's per-decision record this adapter reads."""

    @property
    def command_id(self) -> str: ...
    @property
    def training_run_id(self) -> str: ...
    @property
    def global_step(self) -> int: ...
    @property
    def decision_step(self) -> int: ...
    @property
    def cadence_steps(self) -> int: ...
    @property
    def policy_version(self) -> int: ...
    @property
    def command_type(self) -> int: ...
    @property
    def action(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def total_ms(self) -> float: ...
    @property
    def inference_ms(self) -> float: ...
    @property
    def expected_risk_severity(self) -> float | None: ...


class DecisionTelemetrySink:
    """Tamiyo's decision telemetry sink (`publish(record)`): one packet per decision."""

    def __init__(self, producer: TelemetryProducer) -> None:
        self.producer = producer

    def publish(self, record: DecisionRecord) -> None:
        ran = record.expected_risk_severity is not None
        self.producer.emit(
            decision_packet(
                run=record.training_run_id,
                step=record.global_step,
                decision_step=record.decision_step,
                cadence_steps=record.cadence_steps,
                command_type=pb.CommandType.ValueType(record.command_type),
                action=record.action,
                reason=record.reason,
                command_id=record.command_id,
                policy_version=record.policy_version,
                latency_s=record.total_ms / 1000.0,
                inference_s=record.inference_ms / 1000.0 if ran else None,
                expected_risk=record.expected_risk_severity,
            )
        )
