"""Oona's configuration: one frozen dataclass, every budget named with its unit."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_DATA_DIR = Path(".tamiyo")
"""Where every component keeps its files unless told otherwise (``TAMIYO_DATA_DIR``)."""


@dataclass(frozen=True)
class OonaSettings:
    """Bus settings shared by producers and consumers.

    `redis_url` empty means: start the embedded server (see oona.server). With
    `redis_cluster` the URL names one node of a Redis Cluster (or a managed clustered
    Redis), from which the client discovers the others.
    """

    redis_url: str = ""
    redis_cluster: bool = False
    data_dir: Path = DEFAULT_DATA_DIR
    key_prefix: str = "tamiyo"
    appendonly: bool = True
    appendfsync: str = "everysec"

    # consuming
    read_batch_size: int = 256
    read_block_ms: int = 50
    max_deliveries: int = 5
    retry_backoff_base_ms: float = 100.0
    retry_backoff_max_ms: float = 10_000.0
    claim_idle_ms: int = 30_000
    claim_interval_ms: int = 1_000
    progress_flush_interval_ms: float = 10.0
    emergency_burst_limit: int = 8
    idempotency_ttl_s: int = 24 * 3600
    dead_letter_copy_max_bytes: int = 64 * 1024
    dead_letter_max_entries: int = 100_000
    dead_letter_max_age_ms: int = 7 * 24 * 3600 * 1000

    # publishing and retention
    stream_max_entries: int = 1_000_000
    # Trajectory segments are large (tens of KB): 1,024 of them bound the server's memory
    # and make a lagging learner push back on the actors publishing them.
    stream_caps: dict[str, int] = field(default_factory=lambda: {"trajectories": 1_024})
    sheddable_streams: frozenset[str] = frozenset({"telemetry"})
    durable_streams: frozenset[str] = frozenset({"field_reports", "policy"})
    pushback_wait_ms: float = 2_000.0
    # On a cluster a durable publish also waits for one replica of the stream's master
    # (where it has one) to have the entries, so that they survive that master's loss.
    replica_ack_timeout_ms: float = 1_000.0
    retain_acked_ms: int = 0

    # connection recovery
    reconnect_backoff_base_ms: float = 50.0
    reconnect_backoff_max_ms: float = 2_000.0
    io_timeout_ms: float = 5_000.0
    io_breaker_failure_threshold: int = 5
    io_breaker_cooldown_ms: float = 1_000.0
    io_breaker_half_open_calls: int = 1

    def cap_for(self, stream: str) -> int:
        """The hard entry cap of a logical stream."""
        return self.stream_caps.get(stream, self.stream_max_entries)

    def with_overrides(self, **changes: object) -> OonaSettings:
        """A copy with some fields changed (tests and CLI flags)."""
        return replace(self, **changes)  # type: ignore[arg-type]
