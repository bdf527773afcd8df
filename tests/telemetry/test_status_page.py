"""The live status page in headless Chromium: it loads, shows a CRITICAL alert raised
during the test, the run's state and Simic's learner (none seen, then its figures), and
a screenshot is written to test-artifacts/."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumers.hub.service import HubSettings
from consumers.nissa.service import NissaSettings
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from producers.sinks import DecisionTelemetrySink, TelemetryEventSink
from producers.telemetry import TelemetryProducer
from weatherlight.services import Weatherlight, WeatherlightSettings, default_services
from weatherlight.supervisor import SupervisorSettings

from .helpers import critical_packet, seed_packet, wait_until
from .test_learning import learner_stats, publish_learner_figures
from .test_nissa import get
from .test_producer import _Record

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_NAMES = ("chromium", "chromium-browser")
BROWSER_TIMEOUT_S = 60.0


class Decision(_Record):
    training_run_id = "run-42"


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    reason = (
        "headless Chromium not found (looked for chromium, chromium-browser on PATH); "
        "install Debian's package: apt-get install -y chromium"
    )
    print(f"SKIPPED status page test: {reason}")
    pytest.skip(reason)


async def browse(browser: str, profile: Path, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--virtual-time-budget=4000", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=BROWSER_TIMEOUT_S)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


@pytest.fixture
async def running(
    settings: OonaSettings, signer: Signer, keyring: Keyring
) -> AsyncIterator[Weatherlight]:
    config = WeatherlightSettings(
        hub=HubSettings(window_ms=100), nissa=NissaSettings(port=0, lag_interval_s=0.2)
    )
    weatherlight = Weatherlight(
        default_services(config), oona=settings, signer=signer, keyring=keyring,
        instance="page-test", settings=SupervisorSettings(),
    )  # fmt: skip
    await weatherlight.start()
    try:
        yield weatherlight
    finally:
        await weatherlight.stop()


async def test_the_status_page_shows_a_critical_alert_raised_during_the_test(
    bus: Bus, running: Weatherlight, tmp_path: Path
) -> None:
    browser = chromium()
    url = running.status_url
    assert url is not None
    kasmina = TelemetryProducer(bus, source="kasmina")
    for seed, layer in (("seed-a", "L1"), ("seed-b", "L1"), ("seed-c", "L2")):
        kasmina.emit(seed_packet("run-42", seed, layer, alpha=0.3, apply_ms=1.2))
    await kasmina.flush()
    tamiyo = TelemetryProducer(bus, source="tamiyo")
    DecisionTelemetrySink(tamiyo).publish(Decision())
    opened = pb.TelemetryEvent(
        name="breaker_opened",
        level=pb.TELEMETRY_LEVEL_WARNING,
        priority=pb.MESSAGE_PRIORITY_HIGH,
        attributes={"breaker": "urza", "previous": "closed", "to": "open"},
    )
    TelemetryEventSink(tamiyo, run="run-42").emit(opened)
    await tamiyo.flush()
    await kasmina.send(critical_packet("run-42", "seed-b", reason="isolation breached at L1"))

    async def shown() -> bool:
        _, body = await get(url + "/api/status")
        status = json.loads(body)
        return bool(status["alerts"]) and any(r["layers"] for r in status["runs"])

    await wait_until(shown)
    dom = await browse(browser, tmp_path / "profile", "--dump-dom", url + "/")
    assert "kasmina.isolation_violation" in dom
    assert "isolation breached at L1" in dom
    assert 'class="badge critical"' in dom
    assert "run run-42" in dom and "seed-c" in dom and "plateau" in dom
    assert "urza" in dom and "telemetry.aggregated" in dom
    no_learner = '<div id="learning"><div class="muted">no learner seen</div></div>'
    assert no_learner in dom
    await publish_learner_figures(bus, learner_stats(updates=12, policy_loss=0.5))

    async def learning_shown() -> bool:
        _, body = await get(url + "/api/status")
        return json.loads(body)["learning"] is not None

    await wait_until(learning_shown)
    dom = await browse(browser, tmp_path / "profile", "--dump-dom", url + "/")
    assert no_learner not in dom
    assert "<th>approx KL</th>" in dom and "<td>3.00e-4</td>" in dom and "<td>12</td>" in dom
    assert "<td>25.0 %</td>" in dom and "<td>expired_no_report</td>" in dom
    assert "<th>rejected in a row</th>" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    await browse(browser, tmp_path / "profile", "--window-size=1280,1100",
                 f"--screenshot={shot}", url + "/")  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
