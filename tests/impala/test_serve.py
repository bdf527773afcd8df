"""`tamiyo-bus serve` with TAMIYO_LEARNER=vtrace runs the V-trace learner as its
`learner` service (in place of Simic's PPO learner) and stops it on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from tests.telemetry.helpers import wait_until
from tests.telemetry.test_nissa import get
from tests.telemetry.test_serve import ROOT, _env
from weatherlight.settings import ENV_LEARNER, LEARNER_VTRACE, SystemSettings


@pytest.mark.slow
async def test_serve_runs_the_vtrace_learner_as_its_learner_service(
    server_url: str, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "weatherlight.serve", "--port", "0",
               "--instance", "serve-vtrace", "--ephemeral-keys"]  # fmt: skip
    env = {**_env(server_url, tmp_path), ENV_LEARNER: LEARNER_VTRACE, "OMP_NUM_THREADS": "1"}
    process = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    url = ""
    lines: list[str] = []
    while not url:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
        assert line, "serve exited early:\n" + "".join(lines)
        lines.append(line)
        if line.startswith("nissa: status page "):
            url = line.split()[3].rstrip("/")
    services: dict[str, dict[str, object]] = {}

    async def learner_reports() -> bool:
        nonlocal services
        status, body = await get(url + "/healthz")
        assert status in (200, 503)
        services = json.loads(body)["components"]["weatherlight"]["services"]
        return "detail" in services["learner"]

    await wait_until(learner_reports, timeout_s=60.0)
    assert services["learner"]["state"] == "running"
    detail = services["learner"]["detail"]
    assert isinstance(detail, dict) and detail["learner"] == "vtrace" and detail["updates"] == 0
    assert not (tmp_path / "simic" / "learner").exists()  # Simic's PPO learner did not start
    process.send_signal(signal.SIGTERM)
    rest, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0
    assert "weatherlight: stopped" in rest.decode()


def test_the_ppo_learner_stays_the_default() -> None:
    assert SystemSettings.from_env({}).weatherlight.impala is None
    chosen = SystemSettings.from_env({ENV_LEARNER: "VTrace", "TAMIYO_DATA_DIR": "/srv/t"})
    assert chosen.weatherlight.impala == chosen.impala
    assert chosen.impala.data_dir == Path("/srv/t/impala")
