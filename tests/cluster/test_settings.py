"""Pointing Oona at a cluster: the setting, its environment variable, the client."""

from __future__ import annotations

from redis.asyncio.cluster import RedisCluster

from oona.cluster import LocalCluster
from oona.connection import cluster_client, open_redis
from oona.settings import OonaSettings
from weatherlight.settings import SystemSettings


def test_the_environment_turns_the_cluster_client_on() -> None:
    env = {"TAMIYO_REDIS_URL": "redis://10.0.0.5:6379", "TAMIYO_REDIS_CLUSTER": "yes"}
    assert SystemSettings.from_env(env).oona.redis_cluster
    assert not SystemSettings.from_env({"TAMIYO_REDIS_URL": "redis://h:6379"}).oona.redis_cluster


async def test_open_redis_gives_the_cluster_client_only_when_asked(
    local_cluster: LocalCluster,
) -> None:
    one = OonaSettings(redis_url=local_cluster.url)
    clustered = one.with_overrides(redis_cluster=True)
    single, cluster = open_redis(one.redis_url, one), open_redis(one.redis_url, clustered)
    try:
        assert cluster_client(single) is None
        assert isinstance(cluster_client(cluster), RedisCluster)
        assert await cluster.ping()
    finally:
        await single.aclose()
        await cluster.aclose()
