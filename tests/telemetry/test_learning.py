"""Simic's learner on Nissa's status view: its gauges, published by the learner's own
telemetry sink, go through the real hub into Nissa and come back in /api/status."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from consumers.nissa.learning import learner_metric, learning_view
from consumers.nissa.store import MetricStore
from leyline_pb import leyline_pb2 as pb
from leyline_vocab.roles import SOURCE_SIMIC
from leyline_vocab.telemetry import METRIC_LEARNER_UPDATES
from oona.bus import Bus
from oona.keys import Keyring
from producers.sinks import TelemetryMetricsSink
from producers.telemetry import TelemetryProducer
from tamiyo_bus.simic.learner import LearnerStats
from tamiyo_bus.simic.state import LearnerProgress
from tests.simic.test_telemetry import update
from weatherlight.learner import learner_gauges

from .helpers import wait_until
from .test_nissa import Stack, get, stack

EXPERIENCE = {"joined": 120, "expired_no_report": 4}


def learner_stats(updates: int, policy_loss: float) -> LearnerStats:
    progress = LearnerProgress(
        updates=updates, running_version=3, candidates_published=2, candidates_rejected=1,
        rejected_in_row=1,
    )  # fmt: skip
    return LearnerStats(progress, dict(EXPERIENCE), 0.25, update(policy_loss))


async def publish_learner_figures(bus: Bus, *stats: LearnerStats) -> None:
    """What the learner's service sends after each update, from source simic."""
    simic = TelemetryProducer(bus, source=SOURCE_SIMIC)
    emit = learner_gauges(TelemetryMetricsSink(simic))
    for figures in stats:
        emit(figures)
    await simic.flush()


async def learning(url: str) -> dict[str, dict[str, float]] | None:
    _, body = await get(url + "/api/status")
    view: dict[str, dict[str, float]] | None = json.loads(body)["learning"]
    return view


@pytest.fixture
async def windowed_stack(bus: Bus, keyring: Keyring) -> AsyncIterator[Stack]:
    async for running in stack(bus, keyring, window_ms=100):
        yield running


async def test_the_status_view_shows_the_learners_latest_figures_from_the_hub(
    bus: Bus, windowed_stack: Stack
) -> None:
    url = windowed_stack.url
    assert await learning(url) is None
    await publish_learner_figures(bus, learner_stats(updates=7, policy_loss=0.9))

    async def updated_to(updates: float) -> bool:
        view = await learning(url)
        return view is not None and view["figures"].get("updates") == updates

    await wait_until(lambda: updated_to(7))
    await publish_learner_figures(bus, learner_stats(updates=8, policy_loss=0.5))
    await wait_until(lambda: updated_to(8))

    view = await learning(url)
    assert view is not None
    assert view["figures"] == pytest.approx(
        {
            "policy_loss": 0.5, "value_loss": 1.0, "entropy": 2.0, "approx_kl": 0.01,
            "clip_fraction": 0.1, "explained_variance": 0.3, "learning_rate": 3e-4,
            "grad_norm": 0.4, "updates": 8, "policy_version": 3, "replay_fill": 0.25,
            "candidates_rejected_in_row": 1,
        }
    )  # fmt: skip
    assert view["candidates"] == {"deferred": 0, "published": 2, "rejected": 1}
    assert view["experience"] == {"expired_no_report": 4, "joined": 120}


def gauge(name: str, value: float) -> pb.AggregatedSeries:
    return pb.AggregatedSeries(name=name, kind=pb.METRIC_KIND_GAUGE, count=1, last=value)


def test_the_view_names_no_learner_for_other_sources_or_once_its_series_expired() -> None:
    store = MetricStore()
    store.ingest(gauge("tamiyo.expected_risk_severity", 0.2), (), now_s=0.0)
    assert learning_view(store.gauge_values) is None

    store.ingest(gauge(learner_metric(METRIC_LEARNER_UPDATES), 4.0), (), now_s=0.0)
    assert learning_view(store.gauge_values) == {
        "figures": {"updates": 4.0}, "candidates": {}, "experience": {},
    }  # fmt: skip

    store.expire(now_s=store.settings.series_idle_expiry_s + 1.0)
    assert learning_view(store.gauge_values) is None
