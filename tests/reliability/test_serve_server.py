"""Issue 18, findings 1 and 3: the embedded server persists by default, `serve` restarts
it when it dies and every service reconnects by itself, and a process killed without
warning does not leave its embedded server running.

`kill -9` of `serve`'s server child right after it acknowledged 2,000 field reports: the
dead child is reaped, a new one serves the same socket from the append-only file, Simic
stores every report (those from before the kill and those published after it) and
`/healthz` is 200 again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from consumers.simic import ReportStore
from leyline_pb import leyline_pb2 as pb
from leyline_vocab.roles import SOURCE_SIMIC, SOURCE_TAMIYO, SOURCE_WEATHERLIGHT
from oona.bus import Bus, Outgoing
from oona.connection import open_redis
from oona.keyfiles import load_private_key_file
from oona.settings import OonaSettings
from oona.streams import Stream
from tests.reliability.processes import (
    ROOT,
    Deployment,
    http_get,
    running,
    server_child,
    start_serve,
    wait_until,
)
from weatherlight.learner import ENV_SIMIC_SIGNING_KEY_FILE

ACKED_REPORTS = 2_000
pytestmark = pytest.mark.slow


async def _healthz(url: str) -> tuple[int, dict[str, object]]:
    status, body = await asyncio.to_thread(http_get, url + "/healthz")
    return status, (json.loads(body) if body else {})


async def _until_healthy(url: str, timeout_s: float) -> None:
    async def healthy() -> bool:
        return (await _healthz(url))[0] == 200

    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await healthy():
        assert asyncio.get_running_loop().time() < deadline, "/healthz never came back to 200"
        await asyncio.sleep(0.2)


def _reports(count: int, first: int = 0) -> list[Outgoing]:
    return [
        Outgoing(
            pb.MESSAGE_TYPE_FIELD_REPORT,
            pb.FieldReport(report_id=f"report-{i}", training_run_id="run").SerializeToString(),
            stream=Stream.FIELD_REPORTS,
        )
        for i in range(first, first + count)
    ]


async def test_serve_restarts_a_killed_server_and_loses_nothing_it_acknowledged(
    tmp_path: Path,
) -> None:
    deployment = Deployment.create(tmp_path / "keys")
    data = tmp_path / "data"
    simic_key = {ENV_SIMIC_SIGNING_KEY_FILE: str(deployment.key_file(SOURCE_SIMIC))}
    served = await start_serve(
        deployment.environment(SOURCE_WEATHERLIGHT, data, **simic_key), "--instance", "reliability"
    )
    settings = OonaSettings(redis_url=f"unix://{data / 'redis' / 'redis.sock'}")
    tamiyo = Bus(
        open_redis(settings.redis_url, settings),
        settings, load_private_key_file(deployment.key_file(SOURCE_TAMIYO)), source=SOURCE_TAMIYO,
    )  # fmt: skip
    store = ReportStore(data / "simic" / "field_reports.sqlite3")
    try:
        await _until_healthy(served.url, 60)
        await tamiyo.publish_many(_reports(ACKED_REPORTS))  # returned: acknowledged
        old = server_child(served.process.pid)
        assert old is not None

        os.kill(old, signal.SIGKILL)

        # Waited for off the loop, so that serve's output is read on meanwhile: a full
        # pipe would stop serve in its next log line.
        await asyncio.to_thread(wait_until, lambda: not running(old), what="the dead server reaped")
        await asyncio.to_thread(
            wait_until,
            lambda: server_child(served.process.pid) not in (None, old),
            what="a new server",
        )
        await tamiyo.publish_many(_reports(10, first=ACKED_REPORTS))
        await asyncio.to_thread(
            wait_until, lambda: store.count() == ACKED_REPORTS + 10,
            what="Simic storing every report, from before the kill and after it",
        )  # fmt: skip
        await _until_healthy(served.url, 30)
        services = (await _healthz(served.url))[1]["components"]["weatherlight"]["services"]  # type: ignore[index]
        assert services["server"]["server_restarts"] == 1  # type: ignore[index]
    finally:
        code = await served.stop()
        store.close()
        await tamiyo.close()
    assert code == 0, "".join(served.output[-20:])
    assert server_child(served.process.pid) is None


def test_a_process_killed_without_warning_takes_its_embedded_server_with_it(
    tmp_path: Path,
) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from oona.server import EmbeddedServer; "
         "s = EmbeddedServer(data_dir=Path(sys.argv[1])).start(); print(s.pid, flush=True); "
         "time.sleep(600)", str(tmp_path / "redis")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert owner.stdout is not None
    server_pid = int(owner.stdout.readline())
    assert running(server_pid)

    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()

    wait_until(lambda: not running(server_pid), timeout_s=15, what="the orphaned server stopping")
