"""A local Redis Cluster (3 masters, 3 replicas) for the session, and the bus settings
of every test here over {one server, the cluster}: the same tests, both ways."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from oona.cluster import LocalCluster
from oona.settings import OonaSettings


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(base_dir=tmp_path_factory.mktemp("cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["server", "cluster"])
def settings(request: pytest.FixtureRequest, settings: OonaSettings) -> OonaSettings:
    if request.param == "server":
        return settings
    cluster: LocalCluster = request.getfixturevalue("local_cluster")
    return settings.with_overrides(redis_url=cluster.url, redis_cluster=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in str(item.path):
            item.add_marker(pytest.mark.cluster)
