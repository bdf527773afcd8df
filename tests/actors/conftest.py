"""Fixtures of the actor tests that run the `tamiyo-bus actor` command's processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.actors.processes import own_server


@pytest.fixture
def server_url_alone() -> Iterator[str]:
    """A server of the test's own (``processes.own_server``)."""
    with own_server() as url:
        yield url
