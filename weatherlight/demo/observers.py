"""Training observers that hand the run's progress to the async side.

Each call only copies a few values into a bounded, non-blocking queue (the field-report
queue, a telemetry producer's buffer), so observers add microseconds to a step.
"""

from __future__ import annotations

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import LABEL_RUN, SOURCE_TOLARIA, add_metric
from producers.telemetry import TelemetryProducer
from tamiyo_bus.reports.reporter import FieldReporter
from tamiyo_bus.tolaria.trainer import EpochRecord, StepRecord

TOLARIA_STEP_EVERY = 10  # a Tolaria step packet every this many steps


class FieldReportObserver:
    """Opens an observation window for every command Kasmina applied (NO_OPs open none)
    and tells the windows when an epoch ends."""

    def __init__(self, reporter: FieldReporter) -> None:
        self.reporter = reporter
        self.refused = 0  # offers the full queue turned away (counted, never blocking)

    def on_step(self, record: StepRecord) -> None:
        if record.command is None or record.packet is None or record.result is None:
            return
        if record.result.applied and record.command.command_type != pb.COMMAND_TYPE_NO_OP:
            self.refused += not self.reporter.on_command(record.command, record.packet)

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.refused += not self.reporter.on_epoch_end(record.state)


class TolariaTelemetry:
    """Tolaria's own telemetry: loss, step time and learning rate every few steps, and
    the epoch's figures at its end."""

    def __init__(self, producer: TelemetryProducer, run_id: str) -> None:
        self.producer = producer
        self.run_id = run_id

    def on_step(self, record: StepRecord) -> None:
        if record.step % TOLARIA_STEP_EVERY:
            return
        packet = pb.TelemetryPacket(source=SOURCE_TOLARIA)
        labels = {LABEL_RUN: self.run_id}
        gauge, latency = pb.METRIC_KIND_GAUGE, pb.METRIC_KIND_HISTOGRAM
        add_metric(packet, "training_loss", record.loss, kind=gauge, **labels)
        add_metric(packet, "step_latency", record.train_ms / 1000.0, "s", kind=latency, **labels)
        add_metric(
            packet, "tamiyo_step_overhead", record.tamiyo_ms / 1000.0, "s", kind=latency, **labels
        )
        add_metric(packet, "learning_rate", record.learning_rate, kind=gauge, **labels)
        add_metric(packet, "live_seeds", float(record.live_seeds), kind=gauge, **labels)
        self.producer.emit(packet)

    def on_epoch_end(self, record: EpochRecord) -> None:
        packet = pb.TelemetryPacket(source=SOURCE_TOLARIA)
        labels = {LABEL_RUN: self.run_id}
        gauge, latency = pb.METRIC_KIND_GAUGE, pb.METRIC_KIND_HISTOGRAM
        add_metric(packet, "epoch", float(record.epoch), kind=gauge, **labels)
        add_metric(packet, "validation_loss", record.val_loss, kind=gauge, **labels)
        add_metric(packet, "validation_accuracy", record.val_accuracy, kind=gauge, **labels)
        add_metric(packet, "train_accuracy", record.train_accuracy, kind=gauge, **labels)
        add_metric(packet, "epoch_duration", record.seconds, "s", kind=latency, **labels)
        add_metric(packet, "seed_parameters", float(record.seed_parameters), kind=gauge, **labels)
        self.producer.emit(packet)
