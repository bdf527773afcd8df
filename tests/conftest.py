"""Shared fixtures: one real Redis-compatible server per test run (the embedded one, or
TAMIYO_REDIS_URL when set), an isolated key prefix per test, throw-away keys."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from oona.bus import Bus
from oona.connection import open_redis
from oona.keys import UNRESTRICTED, Keyring, Signer
from oona.server import EmbeddedServer
from oona.settings import OonaSettings
from weatherlight.settings import ENV_REDIS_URL


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    configured = os.environ.get(ENV_REDIS_URL)
    if configured:
        yield configured
        return
    server = EmbeddedServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def settings(server_url: str) -> OonaSettings:
    """Fast timings so retry, claim and push-back paths run in milliseconds."""
    return OonaSettings(
        redis_url=server_url,
        key_prefix=f"test-{uuid.uuid4().hex[:12]}",
        read_block_ms=20,
        retry_backoff_base_ms=5.0,
        retry_backoff_max_ms=40.0,
        claim_idle_ms=200,
        claim_interval_ms=50,
        pushback_wait_ms=100.0,
        io_timeout_ms=2_000.0,
    )


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture(scope="session")
def keyring(signer: Signer) -> Keyring:
    return Keyring.of(signer.public_key(), role=UNRESTRICTED)


@pytest.fixture
async def bus(settings: OonaSettings, signer: Signer) -> AsyncIterator[Bus]:
    client = Bus(open_redis(settings.redis_url, settings), settings, signer, source="test")
    try:
        yield client
    finally:
        await client.close()
