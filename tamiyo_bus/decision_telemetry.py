"""Per-decision telemetry, handed off the step path through a bounded queue.

The step path only builds a small frozen record and enqueues it; a background thread
hands records to the sink (the bus publisher, wired by the telemetry service). When
the queue is full the oldest record is dropped and counted: the step path never
waits, and the freshest decisions are the ones kept.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class DecisionTelemetry:
    command_id: str
    training_run_id: str
    global_step: int
    policy_version: int
    command_type: int  # leyline CommandType
    action: str  # action-space name, e.g. "COMMAND_TYPE_SEED/SEED_OP_GERMINATE"
    reason: str
    total_ms: float  # whole evaluate_step as the caller saw it
    build_ms: float  # blueprint lookup + graph build (0 when the policy did not run)
    inference_ms: float
    gating_ms: float  # command assembly and stamping plus the gate's review
    risk_ms: float  # the gate's review alone: the risk engine's share of the decision
    signing_ms: float
    compile_state: str
    feature_coverage: Mapping[str, float]  # per node type, empty when nothing was built
    expected_risk_severity: float | None
    urza_timed_out: bool


class TelemetrySink(Protocol):
    def publish(self, telemetry: DecisionTelemetry) -> None: ...


class TelemetryPublisher:
    """Bounded, drop-oldest hand-off from the step path to a :class:`TelemetrySink`."""

    def __init__(self, sink: TelemetrySink, *, queue_size: int) -> None:
        self._sink = sink
        self._queue: queue.Queue[DecisionTelemetry] = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self.published = 0
        self.failed = 0
        threading.Thread(target=self._run, name="tamiyo-telemetry", daemon=True).start()

    def submit(self, telemetry: DecisionTelemetry) -> None:
        """Enqueue without blocking; when full, drop the oldest record (counted)."""
        while True:
            try:
                self._queue.put_nowait(telemetry)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self._queue.task_done()
                    self.dropped += 1
                except queue.Empty:
                    continue

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued record reached the sink; False on timeout."""
        with self._queue.all_tasks_done:
            return self._queue.all_tasks_done.wait_for(
                lambda: self._queue.unfinished_tasks == 0, timeout_s
            )

    def _run(self) -> None:
        while True:
            telemetry = self._queue.get()
            try:
                self._sink.publish(telemetry)
                self.published += 1
            except Exception:
                self.failed += 1  # a failing sink must never stop the publisher
            finally:
                self._queue.task_done()
