"""The system the soak runs, as real processes, and what it can do to them.

- the server: the embedded server on a TCP port, owned here (so it can be `kill -9`ed
  and started again on its append-only file);
- a TCP proxy (bench/tcp_proxy.py) in front of it for the trainer and the probes, which
  can drop every connection or add latency; Weatherlight's services connect directly;
- Weatherlight's services, each a `serve` process of its own (so each can be killed):
  the telemetry hub, Nissa, the drain, and two Simic intakes sharing one store (not
  Simic's learner);
- the trainer (bench/soak_trainer.py), the probes (bench/soak_probe.py) and a producer
  whose clock is two minutes ahead.

A killed process is started again after `RESTART_DELAY_S`, as a service manager would.
`healthy()` says whether the system does its work: every process runs, the trainer
steps and its log writes, every probe acknowledged a second ago was delivered, no group
is behind, and Nissa's /healthz has no problem but the refused CRITICAL messages the
skewed producer causes on purpose.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.tcp_proxy import TcpProxy
from leyline_vocab.roles import SOURCE_WEATHERLIGHT
from oona.keyfiles import ENV_SIGNING_KEY_FILE, ENV_TRUSTED_KEYS_DIR
from oona.server import EmbeddedServer
from oona.streams import Stream, stream_key
from weatherlight.role_keys import PRIVATE, TRUSTED, RoleKeys
from weatherlight.settings import ENV_CLAIM_IDLE_MS, ENV_DATA_DIR, ENV_LEARNER, ENV_REDIS_URL

ROOT = Path(__file__).resolve().parents[1]
RESTART_DELAY_S = 0.5
CLAIM_IDLE_MS = 3_000
MAX_GROUP_BEHIND = 400
PREFIX = "tamiyo"
URGENT_REJECTION = "urgent message rejected"
SERVICES = {
    "hub": ("telemetry-hub,events", "soak"),
    "nissa": ("nissa,events", "soak"),
    "drain": ("drain,events", "soak"),
    "simic-a": ("simic,events", "soak-a"),
    "simic-b": ("simic,events", "soak-b"),
}
CONSUMERS = {  # how to tell that a (re)started service consumes: its consumer polls
    "hub": (Stream.TELEMETRY, "telemetry-hub", "soak-telemetry-hub"),
    "nissa": (Stream.TELEMETRY_AGGREGATED, "nissa", "soak-nissa"),
    "drain": (Stream.EMERGENCY, "weatherlight", "soak-drain"),
    "simic-a": (Stream.FIELD_REPORTS, "simic", "soak-a-simic"),
    "simic-b": (Stream.FIELD_REPORTS, "simic", "soak-b-simic"),
    "probe-consumer": (Stream.TELEMETRY, "soak-probe", "probe"),
}
WATCHED_GROUPS = {
    Stream.TELEMETRY: ("telemetry-hub", "soak-probe"),
    Stream.EMERGENCY: ("telemetry-hub", "weatherlight", "soak-probe"),
    Stream.TELEMETRY_AGGREGATED: ("nissa",),
    Stream.FIELD_REPORTS: ("simic",),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


@dataclass
class Managed:
    """One process of the system, restarted by `restart` with the same command."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    stopped: bool = False

    started_s: float = 0.0

    def start(self) -> None:
        self.started_s = time.time()
        argv = [a.replace("{incarnation}", str(self.starts)) for a in self.argv]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT)  # fmt: skip
        self.starts += 1

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)
        if signum == signal.SIGKILL:
            self.process.wait()
        self.stopped = signum == signal.SIGSTOP

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None and not self.stopped

    def terminate(self, timeout_s: float = 60.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if self.stopped:
            self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class System:
    out: Path
    probe_rates: dict[str, float] = field(default_factory=lambda: {"telemetry": 50.0,
                                                                   "emergency": 5.0})  # fmt: skip
    processes: dict[str, Managed] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        self.keys_dir = self.out / "keys"
        self.keys = RoleKeys.create(self.keys_dir)
        self.data = self.out / "data"
        self.wal_dir = self.out / "wal"
        self.server_port = free_port()
        self.server = EmbeddedServer(data_dir=self.out / "redis", tcp_port=self.server_port)
        self.proxy: TcpProxy | None = None
        self.nissa_port = free_port()
        self.client: redis.Redis | None = None
        self.tmpfs = False

    # ---------------------------------------------------------------- start

    def start(self) -> None:
        self.server.start()
        self.client = redis.Redis(host="127.0.0.1", port=self.server_port, socket_timeout=5)
        self.proxy = TcpProxy(self.server_port).start()
        self.tmpfs = self._mount_tmpfs(self.wal_dir)
        direct = f"redis://127.0.0.1:{self.server_port}"
        proxied = f"redis://127.0.0.1:{self.proxy.port}"
        for name, (services, instance) in SERVICES.items():
            argv = [sys.executable, "-m", "weatherlight.serve", "--services", services,
                    "--instance", instance,
                    "--port", str(self.nissa_port if name == "nissa" else 0)]  # fmt: skip
            self._add(name, argv, self._service_env(direct))
        python = [sys.executable]
        self._add("trainer", [*python, "bench/soak_trainer.py", "--run-dir", str(self.out),
                              "--wal-dir", str(self.wal_dir), "--incarnation", "{incarnation}",
                              "--redis-url", proxied, "--keys", str(self.keys_dir),
                              "--claim-idle-ms", str(CLAIM_IDLE_MS)], self._env())  # fmt: skip
        probe = [*python, "bench/soak_probe.py", "--redis-url", proxied, "--keys",
                 str(self.keys_dir), "--claim-idle-ms", str(CLAIM_IDLE_MS)]  # fmt: skip
        for lane, rate in self.probe_rates.items():
            self._add(f"probe-{lane}", [*probe, "produce", "--lane", lane, "--rate", str(rate),
                                        "--out", str(self.out / f"probe-{lane}.jsonl")],
                      self._env())  # fmt: skip
        self._add("probe-consumer", [*probe, "consume", "--out", str(self.journal)], self._env())
        self._add("skewed", [*probe, "skewed", "--out", str(self.out)], self._env())
        for process in self.processes.values():
            process.start()

    @property
    def journal(self) -> Path:
        return self.out / "probes.sqlite3"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAMIYO_")}
        env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        return env

    def _service_env(self, url: str) -> dict[str, str]:
        env = self._env()
        env.update({
            ENV_REDIS_URL: url, ENV_DATA_DIR: str(self.data),
            ENV_SIGNING_KEY_FILE: str(self.keys_dir / PRIVATE / f"{SOURCE_WEATHERLIGHT}.key"),
            ENV_TRUSTED_KEYS_DIR: str(self.keys_dir / TRUSTED),
            ENV_CLAIM_IDLE_MS: str(CLAIM_IDLE_MS),
            ENV_LEARNER: "off",  # the soak runs no learner: the services it names
        })  # fmt: skip
        return env

    def _add(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.processes[name] = Managed(name, argv, env, self.out / "logs" / f"{name}.log")

    @staticmethod
    def _mount_tmpfs(where: Path) -> bool:
        """A 16 MiB tmpfs under the field-report log, so that ENOSPC is the real thing
        (root only; otherwise the trainer's opener refuses segments on signal)."""
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)],
                              capture_output=True, check=False)  # fmt: skip
        return done.returncode == 0

    # --------------------------------------------------------------- faults

    def kill(self, *names: str) -> None:
        """SIGKILL, then start again after RESTART_DELAY_S (a service manager's job)."""
        for name in names:
            self.processes[name].signal(signal.SIGKILL)
        time.sleep(RESTART_DELAY_S)
        for name in names:
            self.processes[name].start()

    def pause(self, name: str) -> None:
        self.processes[name].signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.processes[name].signal(signal.SIGCONT)

    def kill_server(self) -> None:
        self.server.stop(kill=True)
        time.sleep(RESTART_DELAY_S)
        self.server.start()

    def fill_disk(self) -> None:
        if self.tmpfs:
            filler = self.wal_dir / "filler"
            with filler.open("wb", buffering=0) as handle:
                try:
                    while True:
                        handle.write(b"\0" * (1 << 20))
                except OSError:
                    pass
        else:
            self.processes["trainer"].signal(signal.SIGUSR1)

    def free_disk(self) -> None:
        if self.tmpfs:
            (self.wal_dir / "filler").unlink(missing_ok=True)
        else:
            self.processes["trainer"].signal(signal.SIGUSR2)

    # ---------------------------------------------------------------- health

    def trainer_stats(self) -> list[dict[str, Any]]:
        """The last stats line of each trainer incarnation."""
        found = []
        for path in sorted(self.out.glob("trainer-*.jsonl"), key=lambda p: int(p.stem[8:])):
            lines = path.read_bytes().splitlines()
            if lines:
                found.append(orjson.loads(lines[-1]))
        return found

    def acked_probes(self, lane: str, before_s: float) -> int:
        """How many probes of `lane` were acknowledged by `before_s` (wall clock)."""
        path = self.out / f"probe-{lane}.jsonl"
        acked = 0
        if path.exists():
            for line in path.read_bytes().splitlines():
                row = orjson.loads(line)
                if row["time_s"] > before_s:
                    break
                acked = row["next"]
        return int(acked)

    def delivered_probes(self, lane: str, below: int) -> int:
        if not self.journal.exists():
            return 0
        with sqlite3.connect(self.journal) as db:
            (count,) = db.execute(
                "SELECT COUNT(DISTINCT seq) FROM probes WHERE lane = ? AND seq < ?", (lane, below)
            ).fetchone()
        return int(count)

    def nissa_problems(self) -> list[str] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.nissa_port}/healthz",
                                        timeout=2) as reply:  # fmt: skip
                body = reply.read()
        except urllib.error.HTTPError as error:
            body = error.read()
        except OSError:
            return None
        return [str(p) for p in json.loads(body)["problems"]]

    def alerts(self) -> dict[str, int]:
        """Nissa's firing alerts: name (with its reason, when it has one) -> occurrences."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.nissa_port}/alerts",
                                        timeout=2) as reply:  # fmt: skip
                active = json.loads(reply.read())["active"]
        except OSError:
            return {}
        found: dict[str, int] = {}
        for alert in active:
            reason = alert["attributes"].get("reason")
            name = f"{alert['name']} ({reason})" if reason else alert["name"]
            found[name] = found.get(name, 0) + int(alert["occurrences"])
        return found

    def healthy(self, since_s: float = 0.0) -> str:
        """Empty when the system does its work and every part of it shows it did some
        since `since_s` (wall clock: a fault's end); else the first thing that is wrong."""
        down = [name for name, p in self.processes.items() if not p.running()]
        if down or not self.server.running:
            return f"not running: {down or 'server'}"
        idle = self.consumers_idle(since_s)
        if idle:
            return f"not consuming since it started or the fault ended: {idle}"
        stats = self.trainer_stats()
        trainer = self.processes["trainer"]
        if (
            not stats
            or stats[-1]["incarnation"] != trainer.starts - 1
            or time.time() - stats[-1]["last_step_s"] > 2.0
            or stats[-1]["last_step_s"] < since_s
        ):
            return "the trainer does not step"
        if stats[-1].get("wal_failing") or stats[-1]["disk_full"]:
            return "the trainer's log cannot write"
        for lane in self.probe_rates:
            acked = self.acked_probes(lane, time.time() - 1.0)
            if acked <= self.acked_probes(lane, since_s):
                return f"no {lane} probe acknowledged since the fault ended"
            if self.delivered_probes(lane, acked) < acked:
                return f"{lane} probes acknowledged a second ago are not all delivered"
        behind = self.groups_behind()
        if behind:
            return f"behind: {behind}"
        problems = self.nissa_problems()
        if problems is None:
            return "Nissa does not answer"
        others = [p for p in problems if not p.startswith(URGENT_REJECTION)]
        return f"Nissa: {others}" if others else ""

    def groups(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per stream: entries ever added and, per group, entries read, lag and pending."""
        assert self.client is not None
        found: dict[str, dict[str, Any]] = {}
        for stream in Stream:
            key = stream_key(PREFIX, stream)
            try:
                info: Any = self.client.xinfo_stream(key)
                groups: Any = self.client.xinfo_groups(key)
            except redis.ResponseError:
                continue
            found[stream.value] = {
                "entries_added": int(info["entries-added"]),
                "groups": {
                    g["name"].decode(): {
                        "entries_read": int(g.get("entries-read") or 0),
                        "lag": int(g.get("lag") or 0),
                        "pending": int(g["pending"]),
                    }
                    for g in groups
                },
            }
        return found

    def consumers_idle(self, since_s: float) -> list[str]:
        """Services whose consumer has not polled the server since they (re)started, or
        since `since_s`."""
        assert self.client is not None
        idle = []
        now = time.time()
        for name, (stream, group, consumer) in CONSUMERS.items():
            try:
                rows: Any = self.client.xinfo_consumers(stream_key(PREFIX, stream), group)
            except redis.RedisError:
                idle.append(name)
                continue
            seen = {r["name"].decode(): int(r["idle"]) / 1000.0 for r in rows}
            polled_ago = seen.get(consumer)
            started = max(self.processes[name].started_s, since_s)
            if polled_ago is None or now - polled_ago < started:
                idle.append(name)
        return idle

    def groups_behind(self) -> dict[str, int]:
        try:
            groups = self.groups()
        except redis.RedisError:
            return {"server": -1}
        behind = {}
        for stream, names in WATCHED_GROUPS.items():
            for name, state in groups.get(stream.value, {}).get("groups", {}).items():
                if name in names and state["lag"] + state["pending"] > MAX_GROUP_BEHIND:
                    behind[f"{stream.value}/{name}"] = state["lag"] + state["pending"]
        return behind

    def memory(self) -> dict[str, float]:
        assert self.client is not None
        rss = {name: rss_mb(p.process.pid) for name, p in self.processes.items() if p.process}
        info: Any = self.client.info("memory")
        rss["server_used"] = round(int(info["used_memory"]) / 2**20, 1)
        return rss

    # ----------------------------------------------------------------- stop

    def stop(self, names: list[str]) -> None:
        for name in names:
            self.processes[name].terminate()

    def close(self) -> None:
        for process in self.processes.values():
            process.terminate(timeout_s=10)
        if self.proxy is not None:
            self.proxy.stop()
        if self.client is not None:
            self.client.close()
        self.server.stop()
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.wal_dir)], check=False)
