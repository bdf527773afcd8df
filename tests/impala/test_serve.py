"""`tamiyo-bus serve` with TAMIYO_LEARNER=vtrace runs the V-trace learner as its
`learner` service (in place of Simic's PPO learner) and stops it on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.telemetry.test_serve import _env, services_once_the_learner_reports, started_serve
from weatherlight.settings import ENV_LEARNER, LEARNER_VTRACE, SystemSettings


@pytest.mark.slow
async def test_serve_runs_the_vtrace_learner_as_its_learner_service(
    server_url: str, tmp_path: Path
) -> None:
    env = {**_env(server_url, tmp_path), ENV_LEARNER: LEARNER_VTRACE, "OMP_NUM_THREADS": "1"}
    process, url = await started_serve("serve-vtrace", env)
    services = await services_once_the_learner_reports(url)
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
