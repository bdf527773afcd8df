"""Actor processes of the `tamiyo-bus actor` command on one server, and a V-trace
learner in the test's own process, so the test reads its figures directly."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from oona.bus import Bus
from oona.connection import open_redis
from oona.keyfiles import ENV_SIGNING_KEY_FILE, ENV_TRUSTED_KEYS_DIR
from oona.server import EmbeddedServer
from oona.settings import OonaSettings
from tamiyo_bus.impala.service import ImpalaLearnerService
from tamiyo_bus.impala.settings import ImpalaSettings
from tamiyo_bus.simic.gate import ValidationGateSettings
from weatherlight.role_keys import PRIVATE, TRUSTED, RoleKeys
from weatherlight.settings import ENV_DATA_DIR, ENV_REDIS_URL

EPOCHS, STEPS_PER_EPOCH = 3, 40  # 30 decisions a run, about a second an episode
STOP_WAIT_S = 5.0
ACTOR_FLAGS = ("--runs", "4", "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS_PER_EPOCH))


@contextmanager
def own_server() -> Iterator[str]:
    """A server of its own, stopped and removed on exit: the command's processes use the
    default key prefix, so they cannot share one with other tests or runs."""
    server = EmbeddedServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


def learner_settings(data_dir: Path) -> ImpalaSettings:
    """Small batches and a candidate every other update, every candidate passed: the
    gate's bounds have their own tests, and its simulated runs would cost this test
    more than the learning does."""
    gate = ValidationGateSettings(
        min_held_out_decisions=16, value_error_tolerance=1e6, max_kl=1e6, sim_evaluation=False
    )
    return replace(
        ImpalaSettings(), data_dir=data_dir, batch_segments=8, updates_per_publish=2,
        checkpoint_every_updates=0, gate=gate,
    )  # fmt: skip


@contextmanager
def actors(
    url: str,
    keys_dir: Path,
    work: Path,
    count: int,
    *flags: str,
    environ: Mapping[str, str] | None = None,
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` actor processes (actor-i, seed i), stdout to ``work/actor-i.log``,
    with ``environ`` added to their environment; every one still running is killed on
    exit."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        **(environ or {}),
        **{
            ENV_REDIS_URL: url,
            ENV_DATA_DIR: str(work / "data"),
            ENV_TRUSTED_KEYS_DIR: str(keys_dir / TRUSTED),
            ENV_SIGNING_KEY_FILE: str(keys_dir / PRIVATE / "tamiyo.key"),
        },
    )
    started = []
    try:
        for i in range(count):
            command = [sys.executable, "-m", "weatherlight.cli", "actor", "--actor-id",
                       f"actor-{i}", "--seed", str(i), *ACTOR_FLAGS, *flags]  # fmt: skip
            with (work / f"actor-{i}.log").open("wb") as log:
                started.append(
                    subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.DEVNULL)
                )
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait()


def progress_lines(log: Path) -> list[dict[str, object]]:
    """The per-episode progress an actor printed."""
    rows = []
    for line in log.read_text().splitlines():
        head, _, body = line.partition(": ")
        if head.startswith("actor ") and body.startswith("{"):
            rows.append(json.loads(body))
    return rows


async def learn_until(
    url: str,
    keys: RoleKeys,
    settings: ImpalaSettings,
    done: Callable[[ImpalaLearnerService], bool],
    *,
    timeout_s: float,
    poll_s: float = 0.5,
) -> ImpalaLearnerService:
    """The learner on the bus until ``done`` says so (checked every ``poll_s``) or
    ``timeout_s`` passed."""
    oona = OonaSettings(redis_url=url)
    bus = Bus(open_redis(url, oona), oona, keys.signer("simic"), source="simic")
    service = ImpalaLearnerService(bus, settings, keys.signer("simic"), keyring=keys.keyring)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while not done(service) and asyncio.get_running_loop().time() < deadline:
            await asyncio.wait({task}, timeout=poll_s)
            if task.done():
                task.result()
    finally:
        stop.set()
        # a learner that has not stopped within STOP_WAIT_S fails the test's teardown no
        # further: it is cancelled
        await asyncio.wait({task}, timeout=STOP_WAIT_S)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        service.close()
        await bus.close()
    return service
