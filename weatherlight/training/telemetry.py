"""Each training update's figures as telemetry gauges on the bus.

``training_gauges`` maps the trainer's per-update statistics onto gauges of a metrics
sink (``set_gauge``, as ``producers.sinks.TelemetryMetricsSink`` has); non-finite
figures (a loss of an update that applied no step) are left out. ``TrainingTelemetry``
runs a telemetry producer on its own event loop thread for the synchronous training
loop: ``emit`` never blocks, and ``close`` flushes what is buffered.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from oona.bus import Bus
from oona.keys import Signer
from oona.settings import OonaSettings
from producers.sinks import TelemetryMetricsSink
from producers.telemetry import TelemetryProducer
from tamiyo_bus.learning.trainer import TrainingSink, TrainingStats

SOURCE_LEARNER = "tamiyo-learner"
CALL_TIMEOUT_S = 30.0
T = TypeVar("T")

GAUGES: dict[str, Callable[[TrainingStats], float]] = {
    "learning_update": lambda s: s.update,
    "learning_decisions": lambda s: s.decisions,
    "learning_episode_return": lambda s: s.mean_episode_return,
    "learning_policy_loss": lambda s: s.ppo.policy_loss,
    "learning_value_loss": lambda s: s.ppo.value_loss,
    "learning_entropy": lambda s: s.ppo.entropy,
    "learning_approx_kl": lambda s: s.ppo.approx_kl,
    "learning_clip_fraction": lambda s: s.ppo.clip_fraction,
    "learning_explained_variance": lambda s: s.ppo.explained_variance,
    "learning_rate": lambda s: s.ppo.learning_rate,
    "learning_grad_norm": lambda s: s.ppo.grad_norm,
}


class GaugeSink(Protocol):
    def set_gauge(self, name: str, value: float, **labels: str) -> None: ...


def training_gauges(metrics: GaugeSink) -> TrainingSink:
    """A trainer sink that sets one gauge per figure of every update."""

    def emit(stats: TrainingStats) -> None:
        for name, figure in GAUGES.items():
            value = float(figure(stats))
            if math.isfinite(value):
                metrics.set_gauge(name, value)

    return emit


class TrainingTelemetry:
    """A telemetry producer for one training run, on a background event loop."""

    def __init__(self, oona: OonaSettings, signer: Signer, *, run: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="train-telemetry")
        self._thread.start()
        self.bus, self.producer = self._call(self._open(oona, signer))
        self.sink = training_gauges(TelemetryMetricsSink(self.producer, run=run))

    @staticmethod
    async def _open(oona: OonaSettings, signer: Signer) -> tuple[Bus, TelemetryProducer]:
        """Made on the loop that will use them."""
        bus = Bus.connect(oona, signer, source=SOURCE_LEARNER)
        producer = TelemetryProducer(bus, source=SOURCE_LEARNER)
        await producer.start()
        return bus, producer

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT_S)

    def close(self) -> None:
        """Publish what is buffered, then stop the producer, the bus and the loop."""
        try:
            self._call(self.producer.stop())
            self._call(self.bus.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(CALL_TIMEOUT_S)
            self.loop.close()
