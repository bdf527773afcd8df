"""Each training update's figures reach the telemetry stream as gauges of the run."""

from __future__ import annotations

import math
from typing import Any

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import LABEL_RUN
from oona.bus import Bus
from oona.envelope import BATCH_FIELD
from oona.keys import Signer
from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.learning.learner import PPOUpdateStats
from tamiyo_bus.learning.trainer import TrainingStats
from weatherlight.training.telemetry import GAUGES, TrainingTelemetry, training_gauges


def stats(policy_loss: float = 0.25) -> TrainingStats:
    ppo = PPOUpdateStats(
        policy_loss=policy_loss,
        value_loss=0.5,
        entropy=1.5,
        approx_kl=0.01,
        clip_fraction=0.1,
        explained_variance=0.9,
        learning_rate=3e-4,
        grad_norm=0.7,
        transitions=2400,
        epochs=2,
        applied_steps=12,
        failed_steps=0,
        stopped_at_kl=True,
        refused=None,
        duration_s=1.0,
    )
    return TrainingStats(
        update=3,
        env_steps=28_800,
        decisions=7_200,
        mean_episode_return=1.75,
        ppo=ppo,
        rollout_s=9.0,
    )


class Gauges:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        self.values[name] = value


def test_every_finite_figure_becomes_a_gauge() -> None:
    gauges = Gauges()
    training_gauges(gauges)(stats(policy_loss=math.nan))
    assert set(gauges.values) == set(GAUGES) - {"learning_policy_loss"}
    assert gauges.values["learning_episode_return"] == 1.75
    assert gauges.values["learning_approx_kl"] == 0.01
    assert gauges.values["learning_decisions"] == 7_200


async def test_the_gauges_reach_the_telemetry_stream_signed_and_labelled(
    settings: OonaSettings, signer: Signer, bus: Bus
) -> None:
    telemetry = TrainingTelemetry(settings, signer, run="train-test")
    telemetry.sink(stats())
    telemetry.close()
    reply: Any = await bus.redis.xrange(bus.key(Stream.TELEMETRY))
    points = {}
    for _, fields in reply:
        for envelope in pb.EnvelopeBatch.FromString(fields[BATCH_FIELD]).envelopes:
            assert envelope.key_id == signer.key_id
            packet = pb.TelemetryPacket.FromString(envelope.payload)
            assert packet.source == "tamiyo-learner"
            for metric in packet.metrics:
                points[metric.name] = (metric.value, metric.labels[LABEL_RUN], metric.kind)
    assert set(points) == set(GAUGES)
    assert points["learning_entropy"] == (1.5, "train-test", pb.METRIC_KIND_GAUGE)
