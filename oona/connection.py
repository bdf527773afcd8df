"""Connecting to the server, and running IO through a breaker with reconnect backoff."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ClusterDownError, RedisError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from oona.backoff import Backoff
from oona.breaker import BreakerSettings, CircuitBreaker
from oona.errors import BusUnavailable
from oona.metrics import BusMetrics
from oona.server import shared_server
from oona.settings import OonaSettings

T = TypeVar("T")
CLUSTER_CHANGING_ERRORS = (ClusterDownError, SlotNotCoveredError, TryAgainError)
"""A cluster's slots moving or failing over (a master down, a slot without an owner
yet): an outage to wait out like a lost connection, not a server error reply."""
IO_ERRORS = (
    RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, *CLUSTER_CHANGING_ERRORS
)  # fmt: skip
CLUSTER_RETRY_ATTEMPTS = 3
"""Attempts the cluster client makes itself after a node failed, refreshing its slot
map in between (Oona's IoGuard retries the whole call after that)."""


def resolve_url(settings: OonaSettings) -> str:
    """The configured server URL, or the embedded server's (started on first use)."""
    if settings.redis_url:
        return settings.redis_url
    server = shared_server(
        settings.data_dir / "redis",
        appendonly=settings.appendonly,
        appendfsync=settings.appendfsync,
    )
    return server.url


def open_redis(url: str, settings: OonaSettings) -> aioredis.Redis:
    """An asyncio client that does not retry on its own: Oona owns retries and backoff.

    With `redis_cluster` it is redis-py's cluster client (discovering the nodes from
    `url`), which follows MOVED and ASK and refreshes its slot map when a node fails,
    retrying a few times itself with Oona's reconnect backoff. It answers the same
    commands, so it is typed as the single-server client; `cluster_client` tells them apart
    where a cluster needs something else (reads across slots, the replica wait).
    """
    if settings.redis_cluster:
        backoff = ExponentialWithJitterBackoff(
            base=settings.reconnect_backoff_base_ms / 1000.0,
            cap=settings.reconnect_backoff_max_ms / 1000.0,
        )
        cluster = RedisCluster.from_url(
            url,
            protocol=2,
            retry=Retry(backoff, CLUSTER_RETRY_ATTEMPTS),
            socket_timeout=settings.io_timeout_ms / 1000.0,
            socket_connect_timeout=settings.io_timeout_ms / 1000.0,
        )
        return cast(aioredis.Redis, cluster)
    return aioredis.Redis.from_url(
        url,
        protocol=2,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=settings.io_timeout_ms / 1000.0,
        socket_connect_timeout=settings.io_timeout_ms / 1000.0,
    )


def open_sync_redis(url: str, settings: OonaSettings) -> redis.Redis:
    """A blocking client, for readers outside the event loop (the bus exporter): the
    cluster client with `redis_cluster` (its scans visit every master), typed as the
    single-server client as in `open_redis`."""
    if settings.redis_cluster:
        return cast(redis.Redis, redis.RedisCluster.from_url(url))
    return redis.Redis.from_url(url)


def cluster_client(client: object) -> RedisCluster | None:
    """`client` as the cluster client it is (see `open_redis`), or None for one server."""
    return client if isinstance(client, RedisCluster) else None


class IoGuard:
    """Runs server calls with bounded reconnect backoff behind an IO-only breaker.

    Only connection-level failures count: a handler's exception or a server error
    reply (a bug, not an outage) never opens the breaker. A server error reply proves
    the server answers, so it counts as a success; anything else that ends a call (a
    cancellation, a bug in the call) releases a half-open trial slot without a verdict.
    `waiting_for` says, while calls fail, what the caller is waiting for.
    """

    def __init__(self, settings: OonaSettings, metrics: BusMetrics, name: str = "bus_io") -> None:
        self.settings = settings
        self.metrics = metrics
        self.breaker = CircuitBreaker(
            name,
            BreakerSettings(
                failure_threshold=settings.io_breaker_failure_threshold,
                cooldown_ms=settings.io_breaker_cooldown_ms,
                half_open_max_calls=settings.io_breaker_half_open_calls,
            ),
            on_transition=self._record_transition,
        )
        self._failing_since: float | None = None
        self._last_error = ""
        self.failures = 0  # connection failures so far (a reply may have been lost with each)

    def _record_transition(self, name: str, old: object, new: object) -> None:
        self.metrics.inc("breaker_transitions", breaker=name, to=str(new))

    @property
    def waiting_for(self) -> str:
        """Empty while the server answers; else what has failed and for how long."""
        since = self._failing_since
        if since is None:
            return ""
        return (
            f"the server: unreachable for {time.monotonic() - since:.1f} s "
            f"(breaker {self.breaker.state}): {self._last_error}"
        )

    async def run(self, op: Callable[[], Awaitable[T]], *, budget_ms: float | None = None) -> T:
        """Run `op`, retrying connection failures with backoff until `budget_ms` runs out."""
        budget = self.settings.io_timeout_ms if budget_ms is None else budget_ms
        deadline = time.monotonic() + budget / 1000.0
        s = self.settings
        backoff = Backoff(s.reconnect_backoff_base_ms / 1000.0, s.reconnect_backoff_max_ms / 1000.0)
        last_error: BaseException | None = None
        while True:
            if self.breaker.allow():
                try:
                    result = await op()
                except IO_ERRORS as exc:
                    last_error = exc
                    self._failed(exc)
                except RedisError:
                    self._answered()
                    raise
                except BaseException:
                    self.breaker.release()
                    raise
                else:
                    self._answered()
                    return result
            delay_s = backoff.next_s()
            if time.monotonic() + delay_s > deadline:
                state = self.breaker.state
                raise BusUnavailable(
                    f"server unreachable for {budget:.0f} ms (breaker {state}): {last_error}"
                ) from last_error
            await asyncio.sleep(delay_s)

    def _failed(self, exc: BaseException) -> None:
        self.breaker.record_failure()
        self.metrics.inc("io_failures")
        self.failures += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._last_error = f"{type(exc).__name__}: {exc}"

    def _answered(self) -> None:
        self.breaker.record_success()
        self._failing_since = None
