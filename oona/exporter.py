"""The bus's own state as Prometheus metrics (served by `tamiyo-bus bus-exporter`).

Read from the server at scrape time, so every scrape is current and the exporter
holds no state: per stream its length, per group its lag (undelivered + unacked)
and pending count, and per dead-letter stream its length and how many records it ever
received (trimming lowers the first, never the second: their difference is what was
trimmed, and the second's rate is how fast entries are refused).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from oona.replies import entries, group_lag, text
from oona.streams import stream_of_key


class BusCollector(Collector):
    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client = client
        self.stream_prefix = f"{key_prefix}:stream:"
        self.dead_prefix = f"{key_prefix}:dead:"

    def collect(self) -> Iterator[Metric]:
        length = GaugeMetricFamily(
            "oona_stream_entries", "Entries held in a stream", labels=["stream"]
        )
        lag = GaugeMetricFamily(
            "oona_group_lag_entries",
            "Entries a consumer group has not yet acked (undelivered + pending)",
            labels=["stream", "group"],
        )
        pending = GaugeMetricFamily(
            "oona_group_pending_entries", "Entries delivered and not yet acked",
            labels=["stream", "group"],
        )  # fmt: skip
        dead = GaugeMetricFamily(
            "oona_dead_letter_entries", "Entries in a dead-letter stream", labels=["stream"]
        )
        added = CounterMetricFamily(
            "oona_dead_letters_added", "Records ever added to a dead-letter stream",
            labels=["stream"],
        )  # fmt: skip
        for raw_key in self.client.scan_iter(match=self.stream_prefix + "*", _type="stream"):
            key = raw_key.decode()
            stream = stream_of_key(key, self.stream_prefix)
            length.add_metric([stream], float(self.client.xlen(key)))
            groups: Any = self.client.xinfo_groups(key)
            count_after = self._counter(key)
            for group in groups:
                name = text(group["name"])
                lag.add_metric([stream, name], float(group_lag(group, count_after)))
                pending.add_metric([stream, name], float(group["pending"]))
        for raw_key in self.client.scan_iter(match=self.dead_prefix + "*", _type="stream"):
            key = raw_key.decode()
            info: Any = self.client.xinfo_stream(key)
            stream = stream_of_key(key, self.dead_prefix)
            dead.add_metric([stream], float(info["length"]))
            added.add_metric([stream], float(info["entries-added"]))
        yield from (length, lag, pending, dead, added)

    def _counter(self, key: str) -> Callable[[str], int]:
        """Counts the entries of ``key`` after an exclusive start id."""

        def count(after: str) -> int:
            return len(entries(self.client.xrange(key, after, "+")))

        return count
