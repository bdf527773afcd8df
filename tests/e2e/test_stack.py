"""The compose stack end to end, without a container engine: every project service of
docker-compose.yml runs as its own process with the compose file's command and
environment (the server's address, the mounted paths and the published ports mapped to
this machine), against one embedded server, with keys from `make keys`. The trainer
trains until it has decided with a policy Simic's learner published; then: every field
report the trainer wrote is stored by Simic once, a CRITICAL event reaches Nissa's
alerts, and the dead-letter streams hold only what the test forged."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import yaml

from consumers.simic import ReportStore
from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import SOURCE_KASMINA
from oona.bus import Bus
from oona.keyfiles import load_private_key_file
from oona.keys import Signer
from oona.server import EmbeddedServer
from oona.settings import OonaSettings
from producers.telemetry import TelemetryProducer
from tamiyo_bus.reports.records import Kind
from tamiyo_bus.reports.wal import WalSettings, scan
from tests.reliability.processes import eventually, http_get
from tests.telemetry.helpers import critical_packet

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_URL = "redis://redis:6379/0"
KEYS_MOUNT = "./ops/keys"
UPDATE_APPLIED = re.compile(r"run \d+ with policy v(\d+) \(now v(\d+)\)")
TRAINING_TIMEOUT_S = 420.0


@dataclass
class Service:
    """One compose service running as a process; its output is drained by a thread."""

    name: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.output)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _container_root(service: dict[str, object], keys: Path, base: Path) -> Path:
    """The service's view of its mounts: each volume's target under ``root`` is a link to
    what it mounts here (the keys of `make keys`, a directory for a named volume)."""
    root = base / "root"
    for volume in service.get("volumes", []):  # type: ignore[attr-defined]
        source, target = str(volume).split(":")[:2]
        if source.startswith(KEYS_MOUNT):
            here = keys / source.removeprefix(KEYS_MOUNT).lstrip("/")
        else:
            here = base.parent / "volumes" / source
            here.mkdir(parents=True, exist_ok=True)
        link = root / target.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(here)
    return root


def _translate(text: str, root: Path, ports: dict[str, str], url: str) -> str:
    if text == COMPOSE_URL:
        return url
    if text.startswith("/") and (root / text.lstrip("/")).exists():
        return str(root / text.lstrip("/"))
    return ports.get(text, text)


def _start(name: str, spec: dict[str, object], url: str, keys: Path, base: Path) -> Service:
    workdir = base / name
    root = _container_root(spec, keys, workdir)
    ports = {
        str(p).split(":")[1]: str(_free_port())
        for p in spec.get("ports", [])  # type: ignore[attr-defined]
    }
    command = [_translate(str(a), root, ports, url) for a in spec["command"]]  # type: ignore[attr-defined]
    environment = {
        str(k): _translate(str(v), root, ports, url)
        for k, v in spec.get("environment", {}).items()  # type: ignore[attr-defined]
    }
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAMIYO_")}
    env.update(environment, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "weatherlight.cli", *command], cwd=workdir, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    service = Service(name, process)

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            service.output.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return service


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    embedded = EmbeddedServer(data_dir=tmp_path / "redis").start()
    try:
        yield embedded
    finally:
        embedded.stop()


def test_the_compose_stack_closes_the_loop(tmp_path: Path, server: EmbeddedServer) -> None:
    keys = tmp_path / "keys"
    made = subprocess.run(
        ["make", "-s", "keys", f"KEYS_DIR={keys}"], cwd=ROOT, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    project = {name: spec for name, spec in compose["services"].items() if "build" in spec}
    assert {"selfcheck", "weatherlight", "trainer", "bus-exporter"} <= set(project)

    selfcheck = _start("selfcheck", project.pop("selfcheck"), server.url, keys, tmp_path)
    assert selfcheck.process.wait(120) == 0, selfcheck.text()
    services = {
        name: _start(name, spec, server.url, keys, tmp_path) for name, spec in project.items()
    }
    try:
        _check_the_loop(services, tmp_path, keys, server.url)
    finally:
        for service in services.values():
            service.process.terminate()
        for service in services.values():
            try:
                service.process.wait(60)
            except subprocess.TimeoutExpired:
                service.process.kill()
    assert all(s.process.returncode == 0 for s in services.values()), {
        n: s.text()[-2000:] for n, s in services.items() if s.process.returncode != 0
    }


def _check_the_loop(services: dict[str, Service], base: Path, keys: Path, url: str) -> None:
    trainer = services["trainer"]
    deadline = time.monotonic() + TRAINING_TIMEOUT_S
    while not any(
        int(now) > 1 for _, now in UPDATE_APPLIED.findall(trainer.text())
    ):  # a run ended on a policy the learner published
        assert trainer.process.poll() is None, trainer.text()[-3000:]
        assert time.monotonic() < deadline, (
            trainer.text()[-2000:] + services["weatherlight"].text()[-3000:]
        )
        time.sleep(0.5)
    nissa = _nissa_url(services["weatherlight"])
    asyncio.run(_critical_and_forged(url, keys, nissa))

    store = ReportStore(base / "weatherlight" / ".tamiyo" / "simic" / "field_reports.sqlite3")
    log = base / "volumes" / "trainer-data" / "trainer-1" / "field_reports"

    def all_stored() -> bool:
        records = scan(log, WalSettings()).records
        written = {
            pb.FieldReport.FromString(r.body).report_id for r in records if r.kind == Kind.REPORT
        }
        return bool(written) and store.count() == len(written)

    asyncio.run(eventually(all_stored, timeout_s=60, what="Simic storing every report once"))
    store.close()

    client = redis.Redis.from_url(url)
    dead = [
        (fields[b"source_stream"], fields[b"reason"])
        for key in client.scan_iter("*:dead:*")
        for _, fields in client.xrange(key)  # type: ignore[union-attr]
    ]
    client.close()
    forged = [stream for stream, reason in dead if reason == b"unknown_key"]
    assert forged, dead  # the forged packet, refused by each group that read it
    # else only the selfcheck's own poison entry, which it dead-letters on purpose
    assert {stream for stream, reason in dead if reason != b"unknown_key"} <= {
        b"selfcheck.poison"
    }, dead


def _nissa_url(weatherlight: Service) -> str:
    found = re.search(r"nissa: status page (http://\S+)/ ", weatherlight.text())
    assert found, weatherlight.text()[-2000:]
    return found.group(1)


async def _critical_and_forged(url: str, keys: Path, nissa: str) -> None:
    """A CRITICAL event from Kasmina's key reaches Nissa's alerts; a packet signed by a
    key nobody trusts is refused."""
    settings = OonaSettings(redis_url=url)
    kasmina_key = load_private_key_file(keys / "private" / "kasmina.key")
    for signer, reason in ((kasmina_key, "e2e breach"), (Signer.generate(), "forged breach")):
        bus = Bus.connect(settings, signer, source=SOURCE_KASMINA)
        producer = TelemetryProducer(bus, source=SOURCE_KASMINA)
        await producer.start()
        await producer.send(critical_packet("e2e", "seed-x", reason=reason))
        await producer.stop()
        await bus.close()

    def alerted() -> bool:
        _, body = http_get(nissa + "/api/status")
        return b"e2e breach" in body

    await eventually(alerted, timeout_s=30, what="the CRITICAL event in Nissa")
    _, body = http_get(nissa + "/api/status")
    assert b"forged breach" not in body
