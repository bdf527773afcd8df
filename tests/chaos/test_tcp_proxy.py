"""The soak's TCP proxy (bench/tcp_proxy.py) relays real connections, drops them all on
demand and holds what it relays for the latency it is given."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench.tcp_proxy import TcpProxy
from oona.server import EmbeddedServer

LATENCY_MS = 100.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[TcpProxy, redis.Redis]]:
    server = EmbeddedServer(data_dir=tmp_path / "redis", tcp_port=_free_port()).start()
    proxy = TcpProxy(server.tcp_port).start()
    client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=5)
    try:
        yield proxy, client
    finally:
        client.close()
        proxy.stop()
        server.cleanup()


def test_the_proxy_relays_and_drops_every_connection_on_demand(
    proxied: tuple[TcpProxy, redis.Redis],
) -> None:
    proxy, client = proxied
    assert client.ping()

    assert proxy.drop() == 1

    assert client.ping()  # on a new connection: the dropped one was reset
    assert (proxy.stats.connections, proxy.stats.dropped) == (2, 1)


def test_the_proxy_holds_each_chunk_for_its_latency(proxied: tuple[TcpProxy, redis.Redis]) -> None:
    proxy, client = proxied
    client.ping()
    proxy.latency_ms = LATENCY_MS
    started = time.perf_counter()
    client.ping()
    assert time.perf_counter() - started >= 2 * LATENCY_MS / 1000.0  # there and back
