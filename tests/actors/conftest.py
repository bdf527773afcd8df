"""Fixtures of the actor tests that run the `tamiyo-bus actor` command's processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from oona.server import EmbeddedServer


@pytest.fixture
def server_url_alone() -> Iterator[str]:
    """A server of the test's own: the command's processes use the default key prefix."""
    server = EmbeddedServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()
