"""`tamiyo-bus serve` as a process: refuses to start without keys, serves Nissa, and
stops gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from oona.keyfiles import (
    ENV_SIGNING_KEY,
    ENV_SIGNING_KEY_FILE,
    ENV_TRUSTED_KEYS_DIR,
    generate_key_pair,
)
from weatherlight import serve
from weatherlight.learner import ENV_SIMIC_SIGNING_KEY_FILE
from weatherlight.settings import ENV_REDIS_URL, SystemSettings

from .helpers import wait_until
from .test_nissa import get

ROOT = Path(__file__).resolve().parents[2]


def _env(server_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (ENV_SIGNING_KEY_FILE, ENV_SIGNING_KEY, ENV_TRUSTED_KEYS_DIR)}  # fmt: skip
    env[ENV_REDIS_URL] = server_url
    env["TAMIYO_DATA_DIR"] = str(tmp_path)
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_serve_refuses_to_start_without_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in (ENV_SIGNING_KEY_FILE, ENV_SIGNING_KEY, ENV_TRUSTED_KEYS_DIR):
        monkeypatch.delenv(name, raising=False)
    assert serve.main([]) == 2
    err = capsys.readouterr().err
    assert ENV_SIGNING_KEY_FILE in err and "no unsigned mode" in err


def test_serve_refuses_to_start_the_learner_without_simics_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Weatherlight's own key may not sign policies: the learner needs Simic's."""
    generate_key_pair(tmp_path / "private", "weatherlight", public_directory=tmp_path / "trusted")
    monkeypatch.setenv(ENV_SIGNING_KEY_FILE, str(tmp_path / "private" / "weatherlight.key"))
    monkeypatch.setenv(ENV_TRUSTED_KEYS_DIR, str(tmp_path / "trusted"))
    monkeypatch.delenv(ENV_SIGNING_KEY, raising=False)
    monkeypatch.delenv(ENV_SIMIC_SIGNING_KEY_FILE, raising=False)
    monkeypatch.setenv("TAMIYO_DATA_DIR", str(tmp_path))
    assert serve.main([]) == 2
    assert ENV_SIMIC_SIGNING_KEY_FILE in capsys.readouterr().err


def test_a_subset_of_services_without_the_learner_needs_no_key_of_simics() -> None:
    system = SystemSettings.under(Path("data"))
    assert system.weatherlight.learner is not None
    assert serve.without_unwanted_learner(system, "hub,nissa").weatherlight.learner is None
    assert serve.without_unwanted_learner(system, "simic, learner") == system
    assert serve.without_unwanted_learner(system, None) == system


async def started_serve(
    instance: str, env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, str]:
    """`serve` started with throw-away keys, once Nissa says where its status page is."""
    # the serve command without the rest of the CLI (no torch import: seconds faster)
    command = [sys.executable, "-m", "weatherlight.serve", "--port", "0",
               "--instance", instance]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, "--ephemeral-keys", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
        assert line, "serve exited early:\n" + "".join(lines)
        lines.append(line)
        if line.startswith("nissa: status page "):
            return process, line.split()[3].rstrip("/")


async def services_once_the_learner_reports(url: str) -> dict[str, dict[str, object]]:
    """The services in /healthz once the learner's detail is there (it opened its state)."""
    services: dict[str, dict[str, object]] = {}

    async def learner_reports() -> bool:
        nonlocal services
        status, body = await get(url + "/healthz")
        assert status in (200, 503)
        services = json.loads(body)["components"]["weatherlight"]["services"]
        return "detail" in services["learner"]

    await wait_until(learner_reports, timeout_s=60.0)
    return services


@pytest.mark.slow
async def test_serve_runs_the_services_and_stops_gracefully_on_sigterm(
    server_url: str, tmp_path: Path
) -> None:
    process, url = await started_serve("serve-test", _env(server_url, tmp_path))
    services = await services_once_the_learner_reports(url)
    assert set(services) == {"events", "drain", "telemetry-hub", "nissa", "simic", "learner"}
    assert {s["state"] for s in services.values()} == {"running"}
    assert services["learner"]["detail"]["waiting_for"] == ["experience"]  # type: ignore[index]
    assert (tmp_path / "simic" / "field_reports.sqlite3").exists()  # under TAMIYO_DATA_DIR
    assert (tmp_path / "simic" / "learner" / "experience.sqlite3").exists()
    process.send_signal(signal.SIGTERM)
    rest, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0
    assert "weatherlight: stopped" in rest.decode()
