"""The demo's progress bar: one line, redrawn a few times a second.

Shows epoch and step, live loss (smoothed) and the last validation accuracy, live
seeds, the decision latency (p50 and max over the last 200 decisions) and the share
of those decisions the policy made in time (the rest were NO_OPs for a missed
deadline, a busy worker or an open inference breaker). On a
terminal it redraws in place; otherwise (CI logs) it prints one line per epoch.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from typing import TextIO

from tamiyo_bus.tolaria.trainer import EpochRecord, StepRecord
from weatherlight.demo.assembly import Run
from weatherlight.demo.recorder import policy_decided

BAR_WIDTH = 24
REDRAW_S = 0.2
WINDOW = 200  # decisions the latency and policy share are computed over


class ProgressBar:
    def __init__(self, total_steps: int, epochs: int, stream: TextIO = sys.stdout) -> None:
        self.total_steps = max(total_steps, 1)
        self.epochs = epochs
        self.stream = stream
        self.interactive = stream.isatty()
        self._loss = math.nan
        self._accuracy = math.nan
        self._latencies: deque[float] = deque(maxlen=WINDOW)
        self._decided: deque[bool] = deque(maxlen=WINDOW)
        self._last_draw = 0.0
        self._record: StepRecord | None = None
        self._started = time.monotonic()

    def on_step(self, record: StepRecord) -> None:
        self._record = record
        self._loss = (
            record.loss if math.isnan(self._loss) else 0.95 * self._loss + 0.05 * record.loss
        )
        if record.command is not None:
            self._latencies.append(record.decision_ms)
            self._decided.append(policy_decided(record.command))
        now = time.monotonic()
        if self.interactive and now - self._last_draw >= REDRAW_S:
            self._last_draw = now
            self.stream.write("\r" + self._line() + "\x1b[K")
            self.stream.flush()

    def on_epoch_end(self, record: EpochRecord) -> None:
        self._accuracy = record.val_accuracy
        if self.interactive:
            self.stream.write("\r" + self._line() + "\x1b[K")
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()

    def _line(self) -> str:
        record = self._record
        if record is None:
            return "starting..."
        done = (record.step + 1) / self.total_steps
        filled = int(done * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        latencies = sorted(self._latencies)
        decision = (
            f"decision p50 {latencies[len(latencies) // 2]:.2f} ms max {latencies[-1]:.1f} ms, "
            f"policy {sum(self._decided) / len(self._decided):.0%}"
            if latencies
            else "decision -"
        )
        accuracy = "-" if math.isnan(self._accuracy) else f"{self._accuracy:.1%}"
        elapsed = time.monotonic() - self._started
        return (
            f"epoch {record.epoch + 1}/{self.epochs} [{bar}] {done:4.0%} "
            f"step {record.step + 1} | loss {self._loss:.4f} | val acc {accuracy} | "
            f"seeds {record.live_seeds} | {decision} | {elapsed:4.0f}s"
        )


def attach_progress(built: Run, bars: list[ProgressBar]) -> None:
    """Watch ``built``'s whole training with a new bar, appended to ``bars`` (the caller
    closes it once the run is over)."""
    spec = built.spec
    bar = ProgressBar(spec.epochs * spec.steps_per_epoch(built.data), spec.epochs)
    bars.append(bar)
    built.trainer.observers = (*built.trainer.observers, bar)
