"""IMPALA on the bus: the V-trace learner's throughput with 1, 2 and 4 actor processes
and with 1 and 2 learner processes (torchrun), and the actor-to-learner lag.

Each phase starts its actors (`tamiyo-bus actor`, short simulated runs) and its
learner(s) (`tamiyo-bus impala-learner`, every candidate passed by the gate's bounds
left loose) on a fresh server, lets them warm up, then counts the transitions the
learner learnt over the phase from its status lines (rank 0's, which counts every
rank's). The lag (segment published to learnt, p50 and p99) is the learner's own figure
from its last status line.

Each phase runs on a fresh embedded server, or with `--cluster` on a fresh local Redis
Cluster (`oona.cluster.LocalCluster`: 3 masters and 3 replicas from the same binary, on
this machine's cores too). Against another server: `--redis-url URL` (add `--cluster`
if it is one); every phase then uses it with the default key prefix, so give it an
empty server. The learner's gate runs no simulated runs here (`--gate-sim-runs 0`):
the figure is the learning throughput, not the gate's.

Prints a table; with --json, one final JSON line with the figures, sizes and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine
from oona.cluster import LocalCluster
from oona.keyfiles import ENV_SIGNING_KEY_FILE, ENV_TRUSTED_KEYS_DIR
from oona.server import EmbeddedServer
from weatherlight.role_keys import PRIVATE, TRUSTED, RoleKeys
from weatherlight.settings import ENV_DATA_DIR, ENV_REDIS_CLUSTER, ENV_REDIS_URL

CLI = (sys.executable, "-m", "weatherlight.cli")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node")
SIM_FLAGS = ("--runs", "4", "--epochs", "3", "--steps-per-epoch", "40")
LEARNER_FLAGS = (
    "--batch-segments", "8", "--updates-per-publish", "10", "--gate-sim-runs", "0",
    "--status-interval-s",
)  # fmt: skip


@contextmanager
def server(url: str, cluster: bool) -> Iterator[str]:
    """The given server, else a fresh embedded server or local cluster for one phase."""
    if url:
        yield url
    elif cluster:
        local = LocalCluster(base_dir=Path(tempfile.mkdtemp(prefix="impala-cluster-"))).start()
        try:
            yield local.url
        finally:
            local.stop()
    else:
        embedded = EmbeddedServer().start()
        try:
            yield embedded.url
        finally:
            embedded.cleanup()


def status_lines(log: Path, prefix: str) -> list[tuple[float, dict[str, object]]]:
    """(time read, figures) of the learner's status lines, each line stamped by the
    bench's own reader as it came."""
    rows = []
    for line in log.read_text().splitlines():
        stamp, _, rest = line.partition(" ")
        head, _, body = rest.partition(": ")
        if head.startswith(prefix) and body.startswith("{"):
            rows.append((float(stamp), json.loads(body)))
    return rows


def stamped(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``command`` with every line of its output prefixed by the wall time it came."""
    stamper = "import sys,time\nfor l in sys.stdin: sys.stdout.write(f'{time.time()} {l}')"
    shell = " ".join(f"'{part}'" for part in command)
    script = f"{shell} 2>&1 | {sys.executable} -u -c \"{stamper}\" > '{log}'"
    return subprocess.Popen(["bash", "-c", script], env=env, start_new_session=True)


def phase(
    url: str, cluster: bool, actors: int, learners: int, seconds: float, warmup_s: float
) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="impala-bench-"))
    RoleKeys.create(work / "keys")
    base = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    base.update(
        {ENV_DATA_DIR: str(work / "data"), ENV_TRUSTED_KEYS_DIR: str(work / "keys" / TRUSTED)}
    )
    base[ENV_REDIS_URL] = url
    if cluster:
        base[ENV_REDIS_CLUSTER] = "1"
    key = work / "keys" / PRIVATE
    learner_env = dict(base, **{ENV_SIGNING_KEY_FILE: str(key / "simic.key")})
    actor_env = dict(base, **{ENV_SIGNING_KEY_FILE: str(key / "tamiyo.key")})
    learner_cmd = ["impala-learner", "--data-dir", str(work / "impala"), *LEARNER_FLAGS, "2"]
    launcher = [*CLI] if learners == 1 else [*TORCHRUN, str(learners), "-m", "weatherlight.cli"]
    processes = [stamped([*launcher, *learner_cmd], learner_env, work / "learner.log")]
    for i in range(actors):
        command = [*CLI, "actor", "--actor-id", f"actor-{i}", "--seed", str(i), *SIM_FLAGS]
        processes.append(
            subprocess.Popen(
                command, env=actor_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
    time.sleep(warmup_s + seconds)
    os.killpg(processes[0].pid, signal.SIGTERM)  # the learner(s) and the time stamper
    for process in processes[1:]:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    rows = status_lines(work / "learner.log", "impala-learner[0/")
    if not rows:
        return {"actors": actors, "learners": learners, "transitions_per_s": None}
    start_at = rows[0][0] + warmup_s
    window = [(t, r) for t, r in rows if t >= start_at]
    first, last = window[0] if window else rows[0], rows[-1]
    span = max(last[0] - first[0], 1e-9)
    learnt = float(str(last[1]["transitions_learnt"])) - float(str(first[1]["transitions_learnt"]))
    return {
        "actors": actors,
        "learners": learners,
        "transitions_per_s": round(learnt / span, 2),  # every rank's, as rank 0 counts
        "updates": last[1]["updates"],
        "policies_published": last[1]["candidates_published"],
        "lag_s": {k: last[1][k] for k in ("lag_p50_s", "lag_p99_s") if k in last[1]} or None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="15 s phases, 1 and 2 actors")
    parser.add_argument("--phase-s", type=float, default=40.0, help="measured seconds a phase")
    parser.add_argument("--warmup-s", type=float, default=15.0, help="start-up, not measured")
    parser.add_argument("--redis-url", default=os.environ.get(ENV_REDIS_URL, ""))
    parser.add_argument("--cluster", action="store_true", help="the server is a Redis Cluster")
    args = parser.parse_args()
    seconds = 15.0 if args.quick else args.phase_s
    cases = [(1, 1), (2, 1)] if args.quick else [(1, 1), (2, 1), (4, 1), (4, 2)]
    results = []
    for actors, learners in cases:
        with server(args.redis_url, args.cluster) as url:
            results.append(phase(url, args.cluster, actors, learners, seconds, args.warmup_s))
    print(f"{'actors':>6} {'learners':>8} {'transitions/s':>14} {'updates':>8}")
    for r in results:
        print(
            f"{r['actors']:>6} {r['learners']:>8} {r['transitions_per_s']!s:>14}"
            f" {r.get('updates')!s:>8}"
        )
    rate = {(r["actors"], r["learners"]): r["transitions_per_s"] for r in results}

    def ratio(a: tuple[int, int], b: tuple[int, int]) -> float | None:
        x, y = rate.get(a), rate.get(b)
        return round(float(str(x)) / float(str(y)), 3) if x and y else None

    line = {
        "bench": "impala",
        "phases": results,
        "scaling": {
            "actors_2_over_1": ratio((2, 1), (1, 1)),
            "actors_4_over_1": ratio((4, 1), (1, 1)),
            "learners_2_over_1": ratio((4, 2), (4, 1)),
        },
        "sizes": {
            "phase_s": seconds,
            "warmup_s": args.warmup_s,
            "sim": " ".join(SIM_FLAGS),
            "learner": " ".join(LEARNER_FLAGS),
        },
        "server": ("external " if args.redis_url else "local ")
        + ("cluster" if args.cluster else "server"),
        "machine": machine(),
    }
    if args.json:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
