"""The Grafana dashboard and its provisioning match what the stack exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from consumers.hub.service import HubSettings
from consumers.nissa.service import NissaSettings
from leyline_vocab.telemetry import add_metric
from oona.bus import Bus
from oona.events import BufferedEventSink
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from producers.sinks import DecisionTelemetrySink, TelemetryMetricsSink
from producers.telemetry import TelemetryProducer
from tamiyo_bus.risk import RiskGate, RiskSettings
from weatherlight.services import Weatherlight, WeatherlightSettings, default_services

from .helpers import seed_packet, wait_until
from .test_learning import learner_stats, publish_learner_figures
from .test_nissa import get
from .test_producer import _Record

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "tamiyo-bus.json"
PROVISIONING = ROOT / "ops" / "grafana" / "provisioning"
SELECTED_METRIC = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    names = {m.group(1) for e in exprs for m in SELECTED_METRIC.finditer(e)}
    return {n.removesuffix("_bucket") for n in names}


def test_the_dashboard_uses_the_provisioned_data_source_and_mount() -> None:
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "tamiyo-bus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./ops/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts


async def test_every_metric_the_dashboard_queries_is_exported(
    bus: Bus, settings: OonaSettings, signer: Signer, keyring: Keyring
) -> None:
    config = WeatherlightSettings(hub=HubSettings(window_ms=100), nissa=NissaSettings(port=0))
    running = Weatherlight(default_services(config), oona=settings, signer=signer,
                           keyring=keyring, instance="ops-test")  # fmt: skip
    await running.start()
    try:
        kasmina = TelemetryProducer(bus, source="kasmina")
        packet = seed_packet("run-1", "s1", "L1", 0.5, 1.0)
        add_metric(packet, "finalize_latency", 0.002, "s", run="run-1")
        kasmina.emit(packet)
        await kasmina.flush()
        tamiyo = TelemetryProducer(bus, source="tamiyo")
        DecisionTelemetrySink(tamiyo).publish(_Record())
        # The risk engine publishes its breaker and conservative-mode gauges from the start.
        RiskGate(
            RiskSettings(), BufferedEventSink(), metrics=TelemetryMetricsSink(tamiyo, run="run-1")
        )
        await tamiyo.flush()
        await publish_learner_figures(bus, learner_stats(updates=1, policy_loss=0.5))
        url = running.status_url
        assert url is not None
        wanted = dashboard_metrics()

        async def all_exported() -> bool:
            _, body = await get(url + "/metrics")
            text = body.decode()
            return all(name in text for name in wanted)

        await wait_until(all_exported)
    finally:
        await running.stop()
    assert "tamiyo_decisions_total" in wanted and "oona_group_lag_entries" in wanted
    assert {"simic_learner_candidates", "simic_learner_replay_fill"} <= wanted
