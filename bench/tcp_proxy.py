"""A small TCP proxy for fault injection: real sockets between the clients and a server.

Clients connect to the proxy's port; each connection is relayed to the target. While
the proxy runs, `drop()` aborts every open connection (both ends, with a reset), as a
network that loses them would, and `latency_ms` holds every chunk relayed, in either
direction, that long before it is written on (chunks keep their order; the delay does
not cap throughput). It runs an event loop in a thread of its own, so the process
that controls it may block.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

CHUNK_BYTES = 64 * 1024


@dataclass
class ProxyStats:
    connections: int = 0
    dropped: int = 0
    bytes_relayed: int = 0


class TcpProxy:
    """Relays 127.0.0.1:`port` to `target_host`:`target_port`."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.latency_ms = 0.0
        self.stats = ProxyStats()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy",
                                        daemon=True)  # fmt: skip
        self._server: asyncio.Server | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    def start(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def drop(self) -> int:
        """Abort every open connection; returns how many there were."""
        return asyncio.run_coroutine_threadsafe(self._drop(), self._loop).result(10)

    async def _drop(self) -> int:
        pairs = list(self._open)
        for client, upstream in pairs:
            for writer in (client, upstream):
                writer.transport.abort()
        self._open.clear()
        self.stats.dropped += len(pairs)
        return len(pairs)

    def stop(self) -> None:
        async def close() -> None:
            await self._drop()
            if self._server is not None:
                self._server.close()
            current = asyncio.current_task()
            relays = [t for t in asyncio.all_tasks() if t is not current]
            if relays:  # aborted connections end their relays; none is cancelled
                await asyncio.wait(relays, timeout=5)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.stats.connections += 1
        pair = (writer, up_writer)
        self._open.add(pair)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer),
                return_exceptions=True,
            )  # fmt: skip
        finally:
            self._open.discard(pair)
            for end in pair:
                end.transport.abort()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Read chunks as they come, write each once its delay has passed."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def write() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                sink.write(data)
                await sink.drain()
                self.stats.bytes_relayed += len(data)

        writer = asyncio.create_task(write())
        try:
            while data := await source.read(CHUNK_BYTES):
                queue.put_nowait((time.monotonic() + self.latency_ms / 1000.0, data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait((0.0, b""))
            await asyncio.gather(writer, return_exceptions=True)
