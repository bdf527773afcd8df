"""Producers -> hub -> Nissa on the real server, with Nissa's HTTP endpoints."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from consumers.hub.service import HubSettings, TelemetryHub
from consumers.nissa.health import HealthSettings
from consumers.nissa.rules import Alert
from consumers.nissa.service import Nissa, NissaSettings
from consumers.nissa.state import StateSettings
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.keys import Keyring
from producers.sinks import DecisionTelemetrySink
from producers.telemetry import ProducerSettings, TelemetryProducer

from .helpers import critical_packet, read_aggregates, seed_packet, wait_until
from .test_producer import _Record


@dataclass
class Stack:
    hub: TelemetryHub
    nissa: Nissa
    hub_stop: asyncio.Event
    hub_task: asyncio.Task[None]
    url: str


async def stack(bus: Bus, keyring: Keyring, window_ms: float) -> AsyncIterator[Stack]:
    hub = TelemetryHub(bus, keyring, HubSettings(window_ms=window_ms), consumer_name="hub-t")
    health = HealthSettings(hub_silence_s=max(0.5, 5 * window_ms / 1000))
    settings = NissaSettings(
        port=0, tick_interval_s=0.05, lag_interval_s=0.1, state=StateSettings(health=health)
    )
    nissa = Nissa(bus, keyring, settings)
    http = nissa.start_http()
    assert http is not None
    hub_stop, nissa_stop = asyncio.Event(), asyncio.Event()
    hub_task = asyncio.create_task(hub.run(hub_stop))
    nissa_task = asyncio.create_task(nissa.run(nissa_stop))
    try:
        yield Stack(hub, nissa, hub_stop, hub_task, http.url)
    finally:
        hub_stop.set()
        nissa_stop.set()
        await asyncio.gather(hub_task, nissa_task)


@pytest.fixture
async def fast_path_stack(bus: Bus, keyring: Keyring) -> AsyncIterator[Stack]:
    async for running in stack(bus, keyring, window_ms=60_000):  # windows never close
        yield running


@pytest.fixture
async def windowed_stack(bus: Bus, keyring: Keyring) -> AsyncIterator[Stack]:
    async for running in stack(bus, keyring, window_ms=100):
        yield running


async def get(url: str) -> tuple[int, bytes]:
    def fetch() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    return await asyncio.to_thread(fetch)


async def test_a_critical_event_from_kasmina_raises_an_alert_while_normal_load_flows(
    bus: Bus, fast_path_stack: Stack
) -> None:
    raised = asyncio.Event()
    alerts: list[Alert] = []

    def on_alert(alert: Alert) -> None:
        alerts.append(alert)
        raised.set()

    fast_path_stack.nissa.on_alert(on_alert)
    load = TelemetryProducer(bus, source="tolaria", settings=ProducerSettings(flush_interval_ms=5))
    await load.start()
    done = asyncio.Event()

    async def offer_load() -> None:  # about 4,000 packets/s until the alert is in
        i = 0
        while not done.is_set():
            for _ in range(20):
                load.emit(seed_packet("run-1", f"s{i % 8}", "L1", 0.5, 2.0))
                i += 1
            await asyncio.sleep(0.005)

    loader = asyncio.create_task(offer_load())
    hub = fast_path_stack.hub
    await wait_until(lambda: hub.window.counters["packets_received"] >= 1_000)
    kasmina = TelemetryProducer(bus, source="kasmina")
    await kasmina.send(critical_packet("run-1", "s3", reason="gradient leak into host"))
    await asyncio.wait_for(raised.wait(), timeout=10)
    flowing = hub.window.counters["packets_received"]
    done.set()
    await loader
    await load.stop()

    [alert] = alerts
    assert (alert.name, alert.severity.value, alert.summary) == (
        "kasmina.isolation_violation", "critical", "gradient leak into host",
    )  # fmt: skip
    assert dict(alert.labels) == {"run": "run-1", "seed": "s3"}
    assert flowing >= 1_000  # NORMAL telemetry was being consumed meanwhile
    forwarded = await read_aggregates(bus)
    assert {a.priority for a in forwarded} == {pb.MESSAGE_PRIORITY_CRITICAL}  # the fast path
    status, body = await get(fast_path_stack.url + "/alerts")
    view = json.loads(body)
    assert status == 200
    assert [a["name"] for a in view["active"]] == ["kasmina.isolation_violation"]


async def test_per_seed_series_stay_separate_in_metrics(bus: Bus, windowed_stack: Stack) -> None:
    kasmina = TelemetryProducer(bus, source="kasmina")
    for step in range(30):
        for seed, alpha in (("s0", 0.1), ("s1", 0.5), ("s2", 0.9)):
            kasmina.emit(seed_packet("run-1", seed, "L4", alpha + step / 1000, apply_ms=1.0))
    await kasmina.flush()
    tamiyo = TelemetryProducer(bus, source="tamiyo")
    DecisionTelemetrySink(tamiyo).publish(_Record())
    await tamiyo.flush()

    async def exported() -> bool:
        _, body = await get(windowed_stack.url + "/metrics")
        return b"tamiyo_decisions_total" in body and b'seed="s2"' in body

    await wait_until(exported)
    _, body = await get(windowed_stack.url + "/metrics")
    text = body.decode()
    for seed, alpha in (("s0", 0.129), ("s1", 0.529), ("s2", 0.929)):
        line = f'kasmina_seed_alpha{{layer="L4",run="run-1",seed="{seed}"}} {alpha}'
        assert line in text
    assert text.count("kasmina_seed_alpha{") == 3
    assert 'kasmina_apply_latency_seconds_count{run="run-1"} 90.0' in text
    assert 'tamiyo_decisions_total{command_type="COMMAND_TYPE_SEED",run="run-1"} 1.0' in text
    assert "telemetry_hub_packets_received_total" in text
    assert 'oona_group_lag_entries{group="nissa",stream="telemetry.aggregated"}' in text


async def test_healthz_reports_real_health_and_the_status_api_the_runs(
    bus: Bus, windowed_stack: Stack
) -> None:
    async def sampled_and_healthy() -> bool:
        status, body = await get(windowed_stack.url + "/healthz")
        return status == 200 and "streams" in json.loads(body)["bus_lag"]

    await wait_until(sampled_and_healthy)  # hub heartbeats arrive, the lag is sampled
    _, body = await get(windowed_stack.url + "/healthz")
    detail = json.loads(body)
    assert detail["status"] == "ok" and detail["problems"] == []
    assert "nissa" in detail["bus_lag"]["streams"]["telemetry.aggregated"]
    tamiyo = TelemetryProducer(bus, source="tamiyo")
    DecisionTelemetrySink(tamiyo).publish(_Record())
    await tamiyo.flush()

    async def decided() -> bool:
        _, body = await get(windowed_stack.url + "/api/status")
        return bool(json.loads(body)["runs"])

    await wait_until(decided)
    _, body = await get(windowed_stack.url + "/api/status")
    [run] = json.loads(body)["runs"]
    assert run["run"] == "run-1"
    assert run["decisions"][0]["reason"] == "plateau"
    assert run["risk"] == 0.25
    status, page = await get(windowed_stack.url + "/")
    assert status == 200 and b"/api/status" in page
    windowed_stack.hub_stop.set()  # the hub stops: its heartbeats stop, and health says so
    await windowed_stack.hub_task

    async def unhealthy() -> bool:
        status, _ = await get(windowed_stack.url + "/healthz")
        return status == 503

    await wait_until(unhealthy)
    _, body = await get(windowed_stack.url + "/healthz")
    assert any("telemetry hub silent" in p for p in json.loads(body)["problems"])
