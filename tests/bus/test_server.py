"""The embedded server, and recovery when the server itself goes away."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from leyline_pb import leyline_pb2 as pb
from oona.breaker import BreakerState
from oona.bus import Bus
from oona.connection import open_redis
from oona.consumer import Consumer
from oona.errors import BusUnavailable
from oona.keys import Keyring, Signer
from oona.server import EmbeddedServer, find_server_binary
from oona.settings import OonaSettings
from oona.streams import Stream

from .helpers import Recorder, subscription

TELEMETRY = pb.MESSAGE_TYPE_TELEMETRY


def test_embedded_server_starts_writes_its_log_and_stops(tmp_path: Path) -> None:
    server = EmbeddedServer(data_dir=tmp_path / "data").start()
    assert find_server_binary().name in {"redis-server", "valkey-server"}
    assert server.version().split()[0] in {"redis", "valkey"}
    assert server.log_path.exists()
    assert server.socket_path.exists()
    server.stop()
    assert not server.running


async def test_unreachable_server_raises_bus_unavailable_within_the_io_budget(
    tmp_path: Path, signer: Signer
) -> None:
    settings = OonaSettings(
        redis_url=f"unix://{tmp_path}/absent.sock", io_timeout_ms=200.0,
        reconnect_backoff_base_ms=10.0, io_breaker_failure_threshold=2,
    )  # fmt: skip
    bus = Bus(open_redis(settings.redis_url, settings), settings, signer, source="t")
    with pytest.raises(BusUnavailable, match="unreachable for 200 ms"):
        await bus.publish(TELEMETRY, b"x", stream=Stream.NORMAL)
    assert bus.metrics.count("io_failures") >= 2
    assert bus.io.breaker.state is not BreakerState.CLOSED  # IO failures open it
    await bus.close()


async def test_server_restart_with_append_only_loses_nothing_acknowledged(
    tmp_path: Path, signer: Signer, keyring: Keyring
) -> None:
    server = EmbeddedServer(data_dir=tmp_path / "aof", appendonly=True).start()
    settings = OonaSettings(
        redis_url=server.url, read_block_ms=20, io_timeout_ms=10_000.0,
        reconnect_backoff_base_ms=10.0, reconnect_backoff_max_ms=100.0,
    )  # fmt: skip
    bus = Bus(open_redis(server.url, settings), settings, signer, source="t")
    recorder = Recorder()
    consumer = Consumer(bus, subscription(Stream.NORMAL), recorder, keyring)
    stop = asyncio.Event()
    try:
        for i in range(20):
            await bus.publish(TELEMETRY, f"before-{i}".encode(), stream=Stream.NORMAL)
        await consumer.drain()
        assert len(recorder.deliveries) == 20

        server.stop(kill=True)
        runner = asyncio.create_task(consumer.run(stop))  # polls through the outage
        server.start()
        for i in range(20):
            await bus.publish(TELEMETRY, f"after-{i}".encode(), stream=Stream.NORMAL)
        deadline = asyncio.get_running_loop().time() + 10
        while len(recorder.deliveries) < 40 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await runner

        payloads = recorder.payloads
        assert payloads[:20] == [f"before-{i}".encode() for i in range(20)]
        assert sorted(payloads[20:]) == sorted(f"after-{i}".encode() for i in range(20))
        assert (await bus.redis.xpending(bus.key(Stream.NORMAL), "g"))["pending"] == 0
        assert bus.metrics.count("io_failures") >= 1
    finally:
        stop.set()
        await bus.close()
        server.cleanup()
