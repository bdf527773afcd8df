"""Issue 18, finding 1: a kill -9 of the server loses nothing it acknowledged on the
streams where data is at stake.

With `appendfsync everysec` the server answers a write before it is on disk, and while
a background fsync is slow it holds writes back for up to two seconds: a busy disk and
a `kill -9` then lose acknowledged entries (this test's disk pressure made that happen
in about one kill of five). A publish to a durable stream (field reports, policy
updates) returns only once the server has written it to its append-only file
(WAITAOF), so every message id it returned is there after the restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus, Outgoing
from oona.connection import open_redis
from oona.envelope import MAX_ENVELOPES_PER_BATCH
from oona.keys import Signer
from oona.server import EmbeddedServer
from oona.settings import OonaSettings
from oona.streams import Stream

KILLS = 8
ROUNDS = 4
MESSAGES = 1_000
ENTRIES = ROUNDS * -(-MESSAGES // MAX_ENVELOPES_PER_BATCH)  # signed batches of 64
pytestmark = pytest.mark.slow

_PRESSURE = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
while True:
    os.write(fd, b'x' * (4 << 20))
    os.fsync(fd)
    if os.lseek(fd, 0, os.SEEK_CUR) > (200 << 20):
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
"""


async def test_every_durable_publish_survives_a_kill_9_of_a_server_on_a_busy_disk(
    tmp_path: Path, signer: Signer
) -> None:
    pressure = subprocess.Popen([sys.executable, "-c", _PRESSURE, str(tmp_path / "pressure")])
    reports = [
        Outgoing(pb.MESSAGE_TYPE_FIELD_REPORT, b"r" * 200, stream=Stream.FIELD_REPORTS)
        for _ in range(MESSAGES)
    ]
    lost: list[int] = []
    try:
        for kill in range(KILLS):
            server = EmbeddedServer(data_dir=tmp_path / f"redis-{kill}").start()
            settings = OonaSettings(redis_url=server.url)
            bus = Bus(open_redis(server.url, settings), settings, signer, source="tamiyo")
            for _ in range(ROUNDS):
                await bus.publish_many(reports)  # returned: the server acknowledged them
            await bus.close()
            server.stop(kill=True)
            server.start()
            bus = Bus(open_redis(server.url, settings), settings, signer, source="tamiyo")
            kept = await bus.redis.xlen(bus.key(Stream.FIELD_REPORTS))
            lost.append(ENTRIES - kept)
            await bus.close()
            server.cleanup()
    finally:
        pressure.kill()
        pressure.wait()
    assert lost == [0] * KILLS
