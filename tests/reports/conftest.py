"""Fixtures for field-report tests on the real server: Simic's own bus client and
store, and background runners that stop cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from consumers.simic import ReportStore
from oona.bus import Bus
from oona.connection import open_redis
from oona.keys import Signer
from oona.settings import OonaSettings


@pytest.fixture
async def simic_bus(settings: OonaSettings, signer: Signer) -> AsyncIterator[Bus]:
    client = Bus(open_redis(settings.redis_url, settings), settings, signer, source="simic")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ReportStore]:
    db = ReportStore(tmp_path / "simic" / "reports.sqlite3")
    try:
        yield db
    finally:
        db.close()


class Background:
    """Runs `run(stop)` coroutines as tasks; each can be stopped on its own."""

    def __init__(self) -> None:
        self._running: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}

    def start(self, name: str, run: Any) -> None:
        stop = asyncio.Event()
        coro: Coroutine[Any, Any, None] = run(stop)
        self._running[name] = (stop, asyncio.create_task(coro))

    async def stop(self, name: str) -> None:
        stop, task = self._running.pop(name)
        stop.set()
        await task

    async def stop_all(self) -> None:
        for name in list(self._running):
            await self.stop(name)


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    runner = Background()
    try:
        yield runner
    finally:
        await runner.stop_all()
