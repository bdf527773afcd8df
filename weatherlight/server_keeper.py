"""The ``server`` service: keeps the embedded server of `serve` running.

When no server URL is configured, `serve` starts the embedded server itself and this
service watches it. A server that exits (killed, out of memory, crashed) is reaped and
started again on the same data directory and socket, with backoff while it keeps
failing: its append-only file brings back everything it acknowledged, and every
service reconnects to the address it knows by itself. While the server is down the
service's health says so (`waiting_for`), with how many restarts it took so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from leyline_vocab.events import EventKind, event
from oona.backoff import Backoff
from oona.server import EmbeddedServer, ServerError
from weatherlight.supervisor import ServiceContext, ServiceRun

log = logging.getLogger(__name__)

SERVER = "server"


@dataclass(frozen=True)
class ServerKeeperSettings:
    check_interval_ms: float = 200.0
    restart_backoff_base_ms: float = 200.0
    restart_backoff_max_ms: float = 5_000.0


class ServerKeeper:
    """Restarts `server` whenever it is found not running, until stopped."""

    def __init__(self, server: EmbeddedServer, settings: ServerKeeperSettings) -> None:
        self.server = server
        self.settings = settings
        self.restarts = 0
        self.waiting_for = ""

    def status(self) -> dict[str, object]:
        return {
            "waiting_for": self.waiting_for,
            "server_restarts": self.restarts,
            "server_pid": self.server.pid,
        }

    async def run(self, context: ServiceContext) -> None:
        s = self.settings
        backoff = Backoff(s.restart_backoff_base_ms / 1000.0, s.restart_backoff_max_ms / 1000.0)
        context.report_status(self.status)
        delay_s = s.check_interval_ms / 1000.0
        while not context.stop.is_set():
            if not self.server.running and not await self._restart(context):
                delay_s = backoff.next_s()
            else:
                backoff.reset()
                delay_s = s.check_interval_ms / 1000.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(context.stop.wait(), timeout=delay_s)

    async def _restart(self, context: ServiceContext) -> bool:
        """Start the dead server again; False when it would not come up."""
        code = self.server.returncode
        self.waiting_for = f"the embedded server, which exited with {code}: restarting it"
        log.error("the embedded server exited with %s; restarting it (log: %s)",
                  code, self.server.log_path)  # fmt: skip
        try:
            self.server.spawn()  # on this thread: the server stops if it ever exits
            await asyncio.to_thread(self.server.wait_ready)
        except (ServerError, OSError) as exc:
            self.waiting_for = f"the embedded server, which will not start: {exc}"
            log.error("the embedded server did not start: %s", exc)
            return False
        self.restarts += 1
        self.waiting_for = ""
        context.events.emit(
            event(EventKind.SERVER_RESTARTED, exit_code=str(code), restarts=self.restarts)
        )
        log.warning("the embedded server is back (restart %d)", self.restarts)
        return True


def server_keeper_service(server: EmbeddedServer, settings: ServerKeeperSettings) -> ServiceRun:
    """The registry entry's run function."""
    keeper = ServerKeeper(server, settings)
    return keeper.run
