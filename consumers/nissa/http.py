"""Nissa's HTTP endpoints on the standard library's threading server.

A thread per request keeps scrapes and page polls off the asyncio loop that consumes
the bus: a slow scrape never delays a CRITICAL alert. Handlers only read NissaState
(under its lock) and render; they never touch the bus.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
SHUTDOWN_POLL_S = 0.1  # how quickly `stop` is noticed by the serving thread


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


Route = Callable[[], Response]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        route = self.server.routes.get(urlsplit(self.path).path)
        if route is None:
            response = Response(404, "text/plain; charset=utf-8", b"not found\n")
        else:
            try:
                response = route()
            except Exception:
                log.exception("nissa: %s failed", self.path)
                response = Response(500, "text/plain; charset=utf-8", b"internal error\n")
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("nissa http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], routes: Mapping[str, Route]) -> None:
        super().__init__(address, _Handler)
        self.routes = routes


class HttpServer:
    """Serves `routes` (path -> response builder) on host:port (port 0: any free one)."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route]) -> None:
        self._server = _Server((host, port), routes)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_S},
            name="nissa-http",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
