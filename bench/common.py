"""Helpers the benchmark scripts share: the server, percentiles and the machine a figure
came from."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from oona.cluster import LocalCluster
from oona.server import EmbeddedServer
from weatherlight.settings import ENV_REDIS_URL


@contextmanager
def bus_server() -> Iterator[tuple[str, str, EmbeddedServer | None]]:
    """(url, server name, the embedded server or None): TAMIYO_REDIS_URL when set, else
    an embedded server started here and removed afterwards."""
    url = os.environ.get(ENV_REDIS_URL, "")
    if url:
        yield url, url, None
        return
    server = EmbeddedServer().start()
    try:
        yield server.url, server.version(), server
    finally:
        server.cleanup()


@contextmanager
def bus_cluster() -> Iterator[tuple[str, str]]:
    """(url of one node, description) of a local cluster of 3 masters with a replica
    each (oona.cluster), started here and removed afterwards."""
    cluster = LocalCluster().start()
    try:
        name = f"{cluster.nodes[0].server.version()} cluster, 3 masters + 3 replicas"
        yield cluster.url, name
    finally:
        cluster.stop()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty sample."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def percentiles(
    values: Sequence[float], *, scale: float = 1.0, digits: int = 4, with_min: bool = False
) -> dict[str, float]:
    """p50 / p95 / p99 (and the minimum: what the code costs on a quiet machine) of a
    non-empty sample, each multiplied by ``scale`` (a unit change) and rounded."""
    ordered = sorted(values)
    out = {"min": round(ordered[0] * scale, digits)} if with_min else {}
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        out[name] = round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale, digits)
    return out


def cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` is empty on most Linux builds)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(**extra: object) -> dict[str, object]:
    """Where a figure was measured: cores, CPU, platform, Python and the load average
    (other work on a shared machine skews tail latencies), plus a bench's own fields."""
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": "cpu",
        "loadavg_1m": round(os.getloadavg()[0], 2),
        **extra,
    }
