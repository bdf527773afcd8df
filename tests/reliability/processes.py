"""Real processes for the reliability tests: who is whose child, whether a pid still
runs, key files for a deployment, and `tamiyo-bus serve` started as a process."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from leyline_vocab.roles import ROLES, SOURCE_SIMIC, SOURCE_WEATHERLIGHT
from oona.keyfiles import (
    ENV_SIGNING_KEY,
    ENV_SIGNING_KEY_FILE,
    ENV_TRUSTED_KEY_FILES,
    ENV_TRUSTED_KEYS,
    ENV_TRUSTED_KEYS_DIR,
    generate_key_pair,
)
from weatherlight.learner import ENV_SIMIC_SIGNING_KEY_FILE
from weatherlight.settings import ENV_DATA_DIR, ENV_REDIS_URL

ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (every thread's)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def running(pid: int) -> bool:
    """The process exists and is neither a zombie nor dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def server_child(pid: int) -> int | None:
    """The Redis-compatible server `pid` started, if one runs."""
    for child in children(pid):
        if process_name(child) in ("valkey-server", "redis-server") and running(child):
            return child
    return None


def wait_until(condition: object, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout_s:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


async def eventually(condition: object, timeout_s: float = 30.0, what: str = "condition") -> None:
    """``wait_until`` for async tests: the loop keeps running meanwhile (a `serve`
    process's output is read by it; a loop asleep in ``time.sleep`` lets the pipe fill
    and blocks the process on its next log line)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout_s:.0f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass(frozen=True)
class Deployment:
    """Key files for every role: each private key in `private`, every public key in
    the trust directory `trusted`."""

    private: Path
    trusted: Path

    @classmethod
    def create(cls, directory: Path) -> Deployment:
        deployment = cls(directory / "private", directory / "trusted")
        for role in ROLES:
            generate_key_pair(deployment.private, role, public_directory=deployment.trusted)
        return deployment

    def key_file(self, role: str) -> Path:
        return self.private / f"{role}.key"

    def environment(self, role: str, data_dir: Path, **extra: str) -> dict[str, str]:
        """The environment of a component that signs as `role` (no inherited keys);
        Weatherlight's also names Simic's key, which its learner signs with."""
        drop = (ENV_SIGNING_KEY, ENV_SIGNING_KEY_FILE, ENV_TRUSTED_KEYS_DIR,
                ENV_TRUSTED_KEY_FILES, ENV_TRUSTED_KEYS, ENV_REDIS_URL)  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(
            {
                ENV_SIGNING_KEY_FILE: str(self.key_file(role)),
                ENV_TRUSTED_KEYS_DIR: str(self.trusted),
                ENV_DATA_DIR: str(data_dir),
                "PYTHONPATH": str(ROOT),
            }
        )
        if role == SOURCE_WEATHERLIGHT:
            env[ENV_SIMIC_SIGNING_KEY_FILE] = str(self.key_file(SOURCE_SIMIC))
        env.update(extra)
        return env


@dataclass
class Served:
    """A running `serve` process, its status URL and what it printed (read on, so
    its pipe never fills)."""

    process: asyncio.subprocess.Process
    url: str
    output: list[str]
    reader: asyncio.Task[None]

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.terminate()
        code = await asyncio.wait_for(self.process.wait(), timeout=30)
        await self.reader
        return code


async def start_serve(env: Mapping[str, str], *args: str) -> Served:
    """`python -m weatherlight.serve` with Nissa on any free port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "weatherlight.serve", "--port", "0", *args,
        env=dict(env), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    stdout = process.stdout
    assert stdout is not None
    output: list[str] = []
    while True:
        line = (await asyncio.wait_for(stdout.readline(), timeout=60)).decode()
        assert line, "serve exited early:\n" + "".join(output)
        output.append(line)
        if line.startswith("nissa: status page "):
            url = line.split()[3].rstrip("/")
            break

    async def read_on() -> None:
        while line := await stdout.readline():
            output.append(line.decode())

    return Served(process, url, output, asyncio.create_task(read_on()))


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()
    except OSError:
        return 0, b""
