"""The V-trace learner's figures as telemetry: after an update the lead rank's sink
gets every figure (losses, rho, grad norm, lag percentiles, segment and policy counts,
buffer fill) as gauges, and through ``impala_on_bus`` they reach the telemetry stream
signed as Simic; another rank reports nothing."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import (
    METRIC_IMPALA_BUFFER_FILL,
    METRIC_IMPALA_LAG_P50,
    METRIC_IMPALA_LAG_P99,
    METRIC_IMPALA_POLICIES,
    METRIC_IMPALA_SEGMENTS,
    METRIC_IMPALA_TRANSITIONS,
    METRIC_IMPALA_UPDATES,
)
from oona.envelope import BATCH_FIELD, SINGLE_FIELD
from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.impala.distributed import RankInfo
from tamiyo_bus.impala.learner import ImpalaLearner
from tamiyo_bus.impala.service import ImpalaLearnerService
from tamiyo_bus.impala.telemetry import lag_percentiles
from tests.simic.test_telemetry import Gauges
from weatherlight.impala_learner import UPDATE_GAUGES, impala_gauges, impala_on_bus

from .helpers import actor_segments, impala_settings, initial_policy
from .test_service import KEYS, _bus, _publish


def test_lag_percentiles_of_none_are_not_numbers() -> None:
    assert all(math.isnan(x) for x in lag_percentiles([]))
    assert lag_percentiles([float(i) for i in range(101)]) == (50.0, 99.0)


async def test_an_update_reports_every_figure_as_a_gauge(
    settings: OonaSettings, tmp_path: Path
) -> None:
    await _publish(_bus(settings, "tamiyo"), actor_segments(initial_policy(), runs=4))
    bus = _bus(settings, "simic")
    gauges = Gauges()
    learner_settings = impala_settings(tmp_path, updates_per_publish=1_000)
    service = ImpalaLearnerService(
        bus, learner_settings, KEYS.signer("simic"), keyring=KEYS.keyring,
        learner=ImpalaLearner(learner_settings, initial_policy()), sink=impala_gauges(gauges),
    )  # fmt: skip
    await service.consumer.drain()
    update = await service.learn_once(asyncio.Event())

    assert update is not None and update.transitions > 0
    names = {name for name, _ in gauges.values}
    assert names >= set(UPDATE_GAUGES)
    v = gauges.values
    assert v[(METRIC_IMPALA_UPDATES, ())] == 1
    assert v[(METRIC_IMPALA_TRANSITIONS, ())] == update.transitions
    assert 0 < v[(METRIC_IMPALA_LAG_P50, ())] <= v[(METRIC_IMPALA_LAG_P99, ())] < 60
    assert v[(METRIC_IMPALA_BUFFER_FILL, ())] == service.buffered / 64
    consumed = v[(METRIC_IMPALA_SEGMENTS, (("outcome", "consumed"),))]
    assert consumed == service.stats.segments_consumed > 8
    assert v[(METRIC_IMPALA_POLICIES, (("outcome", "published"),))] == 0
    service.close()
    await bus.close()


def test_only_the_lead_rank_reports(tmp_path: Path) -> None:
    gauges = Gauges()
    other = RankInfo(rank=1, world_size=2)
    learner = ImpalaLearner(impala_settings(tmp_path), initial_policy())  # its DDP needs no group
    bus = _bus(OonaSettings(redis_url="redis://127.0.0.1:1"), "simic")  # never connected
    service = ImpalaLearnerService(
        bus, impala_settings(tmp_path), KEYS.signer("simic"), keyring=KEYS.keyring,
        rank=other, learner=learner, sink=impala_gauges(gauges),
    )  # fmt: skip
    assert service.sink is None


async def test_the_figures_reach_the_telemetry_stream_signed_as_simic(
    settings: OonaSettings, tmp_path: Path
) -> None:
    tamiyo = _bus(settings, "tamiyo")
    await _publish(tamiyo, actor_segments(initial_policy(), runs=4))
    learner_settings = impala_settings(tmp_path, updates_per_publish=1_000)
    async with impala_on_bus(
        settings, KEYS.keyring, KEYS.signer("simic"), learner_settings
    ) as service:
        await service.consumer.drain()
        assert await service.learn_once(asyncio.Event()) is not None

    reply: Any = await tamiyo.redis.xrange(tamiyo.key(Stream.TELEMETRY))
    envelopes: list[pb.BusEnvelope] = []
    for _, fields in reply:
        if SINGLE_FIELD in fields:
            envelopes.append(pb.BusEnvelope.FromString(fields[SINGLE_FIELD]))
        else:
            envelopes.extend(pb.EnvelopeBatch.FromString(fields[BATCH_FIELD]).envelopes)
    packets = [pb.TelemetryPacket.FromString(e.payload) for e in envelopes]
    assert {p.source for p in packets} == {"simic"}
    names = {m.name for p in packets for m in p.metrics}
    assert {METRIC_IMPALA_UPDATES, METRIC_IMPALA_LAG_P99, METRIC_IMPALA_SEGMENTS} <= names
    await tamiyo.close()
