"""Per-step telemetry from Kasmina, handed off without blocking the step.

`finalize_step` builds plain records (no protobuf, no IO) and offers them to a bounded
outbox; a background publisher drains the outbox and turns records into Leyline
TelemetryPackets (`to_packet`). When the publisher falls behind, the oldest record is
dropped and counted, so the trainer never waits and the loss is visible.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb

SOURCE = "kasmina"


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


def to_packet(item: StepTelemetry, *, packet_id: str, run_id: str) -> pb.TelemetryPacket:
    """A Leyline TelemetryPacket of one step: per-seed series stay separate (labels)."""
    packet = pb.TelemetryPacket(
        packet_id=packet_id,
        source=SOURCE,
        timestamp_ns=item.timestamp_ns,
        level=pb.TELEMETRY_LEVEL_INFO,
        priority=pb.MESSAGE_PRIORITY_NORMAL,
    )
    step = {"run": run_id, "step": str(item.step)}
    packet.metrics.add(name="apply_latency", value=item.apply_ms / 1000.0, unit="s", labels=step)
    packet.metrics.add(
        name="finalize_latency", value=item.finalize_ms / 1000.0, unit="s", labels=step
    )
    for seed in item.seeds:
        labels = {"run": run_id, "seed": seed.seed_id, "layer": seed.layer_id}
        packet.metrics.add(name="seed_alpha", value=seed.alpha, unit="1", labels=labels)
        packet.metrics.add(name="seed_stage", value=float(seed.stage), unit="1", labels=labels)
        packet.metrics.add(
            name="seed_gradient_norm", value=seed.gradient_norm, unit="1", labels=labels
        )
        packet.metrics.add(
            name="seed_isolation_violations",
            value=float(seed.isolation_violations),
            unit="1",
            labels=labels,
        )
    for event in item.events:
        packet.events.add(
            name="seed_transition",
            level=pb.TELEMETRY_LEVEL_INFO,
            attributes={
                "run": run_id,
                "seed": event.seed_id,
                "layer": event.layer_id,
                "from": pb.SeedLifecycleStage.Name(event.from_stage),
                "to": pb.SeedLifecycleStage.Name(event.to_stage),
                "reason": event.reason,
                "blueprint": event.blueprint_id,
            },
        )
    return packet
