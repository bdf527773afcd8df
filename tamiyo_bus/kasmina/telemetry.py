"""Per-step telemetry from Kasmina, handed off without blocking the step.

`finalize_step` builds plain records (no protobuf, no IO) and offers them to a bounded
outbox; a background publisher drains the outbox and turns records into Leyline
TelemetryPackets (`to_packet`). When the publisher falls behind, the oldest record is
dropped and counted, so the trainer never waits and the loss is visible.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind, event
from leyline_vocab.telemetry import (
    EVENT_SEED_TRANSITION,
    LABEL_LAYER,
    LABEL_RUN,
    LABEL_SEED,
    METRIC_SEED_ALPHA,
    METRIC_SEED_STAGE,
    SOURCE_KASMINA,
    add_metric,
)
from oona.events import make_event


@dataclass(frozen=True, slots=True)
class SeedSnapshot:
    seed_id: str
    layer_id: str
    stage: pb.SeedLifecycleStage.ValueType
    alpha: float
    gradient_norm: float
    age_steps: int
    parameters: int
    isolation_violations: int
    blueprint_id: str


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """A seed changed stage (by command, gate outcome or on its own schedule)."""

    step: int
    seed_id: str
    layer_id: str
    from_stage: pb.SeedLifecycleStage.ValueType
    to_stage: pb.SeedLifecycleStage.ValueType
    reason: str
    blueprint_id: str


@dataclass(frozen=True, slots=True)
class StepTelemetry:
    step: int
    timestamp_ns: int
    seeds: tuple[SeedSnapshot, ...]
    events: tuple[LifecycleEvent, ...]
    apply_ms: float  # this step's command application (0 when none)
    finalize_ms: float  # the previous step's finalize_step


class TelemetryOutbox:
    """Bounded, thread-safe hand-off from the step path to a publisher."""

    def __init__(self, max_items: int) -> None:
        self._items: deque[StepTelemetry] = deque(maxlen=max_items)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.offered = 0
        self.dropped = 0

    def offer(self, item: StepTelemetry) -> None:
        """Never blocks: when full the oldest record is dropped and counted."""
        with self._lock:
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(item)
            self.offered += 1
        self._ready.set()

    def drain(self, timeout_s: float = 0.0) -> list[StepTelemetry]:
        """Every waiting record, oldest first; waits up to ``timeout_s`` for one."""
        if timeout_s > 0:
            self._ready.wait(timeout_s)
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._ready.clear()
        return items


def to_packet(item: StepTelemetry, *, run_id: str) -> pb.TelemetryPacket:
    """A Leyline TelemetryPacket of one step, in the shared vocabulary: per-seed series
    stay separate (labelled run, seed, layer); a seed culled for an isolation violation
    also raises an ``isolation_violation`` event at the mapped priority (HIGH), so the
    packet travels the emergency lane."""
    packet = pb.TelemetryPacket(source=SOURCE_KASMINA, timestamp_ns=item.timestamp_ns)
    gauge = pb.METRIC_KIND_GAUGE
    latency = pb.METRIC_KIND_HISTOGRAM
    add_metric(packet, "apply_latency", item.apply_ms / 1000.0, "s", kind=latency, run=run_id)
    add_metric(packet, "finalize_latency", item.finalize_ms / 1000.0, "s", kind=latency, run=run_id)
    for seed in item.seeds:
        labels = {LABEL_RUN: run_id, LABEL_SEED: seed.seed_id, LABEL_LAYER: seed.layer_id}
        add_metric(packet, METRIC_SEED_ALPHA, seed.alpha, kind=gauge, **labels)
        add_metric(packet, METRIC_SEED_STAGE, float(seed.stage), kind=gauge, **labels)
        if math.isfinite(seed.gradient_norm):
            add_metric(packet, "seed_gradient_norm", seed.gradient_norm, kind=gauge, **labels)
        add_metric(
            packet, "seed_isolation_violations", float(seed.isolation_violations), kind=gauge,
            **labels,
        )  # fmt: skip
    for change in item.events:
        attributes: dict[str, str | int | float] = {
            LABEL_RUN: run_id,
            LABEL_SEED: change.seed_id,
            LABEL_LAYER: change.layer_id,
            "from": pb.SeedLifecycleStage.Name(change.from_stage),
            "to": pb.SeedLifecycleStage.Name(change.to_stage),
            "reason": change.reason,
            "blueprint": change.blueprint_id,
            "step": change.step,
        }
        packet.events.append(
            make_event(EVENT_SEED_TRANSITION, pb.MESSAGE_PRIORITY_NORMAL, **attributes)
        )
        if change.reason == EventKind.ISOLATION_VIOLATION:
            packet.events.append(event(EventKind.ISOLATION_VIOLATION, **attributes))
    return packet
