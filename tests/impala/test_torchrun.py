"""`torchrun --nproc-per-node 2 -m weatherlight.cli impala-learner` end to end: both ranks
share one server and consume the trajectories stream in one group (each under its own
consumer name), learn from a SimActor's rewarded segments, rank 0 publishes a signed
PolicyUpdate that Tamiyo's policy intake applies and writes a checkpoint, and a SIGTERM
to one rank stops both (each exits 0, and so does torchrun)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.roles import ROLES
from oona.bus import Bus
from oona.connection import open_redis
from oona.keyfiles import KeySettings, generate_key_pair
from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.experience.segments import ExperienceSettings
from tamiyo_bus.impala.settings import IMPALA_GROUP
from tamiyo_bus.learning.async_checkpoint import load_latest
from tamiyo_bus.policy.profiles import PROFILES, Profile
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.security.policy_update import PolicyUpdateListener, PolicyUpdateTransaction
from tamiyo_bus.sim.actor import ActorSettings, SimActor
from tests.policy.helpers import holder_for

from .helpers import SHORT_SIM

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 90.0
_STATUS = re.compile(r"^impala-learner\[(\d)/2\]: (\{.*\})$")
_PID = re.compile(r"^impala-learner\[(\d)/2\]: pid (\d+),")


class _Output:
    """The learners' lines as they come (a thread reads the pipe)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, what: str, found: Callable[[list[str]], bool]) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: found(self.lines), timeout=DEADLINE_S):
                raise AssertionError(f"no {what} in:\n" + "\n".join(self.lines[-40:]))

    def statuses(self, rank: int) -> list[dict[str, int]]:
        found = [_STATUS.match(line) for line in self.lines]
        return [json.loads(m.group(2)) for m in found if m and int(m.group(1)) == rank]

    def pid(self, rank: int) -> int:
        found = [_PID.match(line) for line in self.lines]
        return next(int(m.group(2)) for m in found if m and int(m.group(1)) == rank)


def _segments(policy: ServingPolicy) -> list[pb.Trajectory]:
    segments: list[pb.Trajectory] = []
    settings = ActorSettings(runs=8, seed=0, sim=SHORT_SIM,
                             experience=ExperienceSettings(segment_max_steps=5))  # fmt: skip
    SimActor(settings, holder_for(policy, 1), segments.append, actor_id="actor-t").play()
    return segments


async def test_two_ranks_under_torchrun_learn_publish_checkpoint_and_stop_together(
    server_url: str, tmp_path: Path
) -> None:
    for role in ("simic", "tamiyo"):
        generate_key_pair(tmp_path / "private", role, public_directory=tmp_path / "trusted")
    oona = OonaSettings(redis_url=server_url, key_prefix=f"test-{uuid.uuid4().hex[:12]}")
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "TAMIYO_DATA_DIR": str(tmp_path / "data"),
        "TAMIYO_SIGNING_KEY_FILE": str(tmp_path / "private" / "simic.key"),
        "TAMIYO_TRUSTED_KEYS_DIR": str(tmp_path / "trusted"),
    }  # fmt: skip
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "weatherlight.cli", "impala-learner", "--redis-url", server_url,
        "--key-prefix", oona.key_prefix, "--batch-segments", "4", "--updates-per-publish", "1",
        "--base-lr", "1e-6",
        "--checkpoint-every-updates", "1", "--held-out-fraction", "0.25",
        "--min-held-out-decisions", "4", "--gate-sim-runs", "0", "--status-interval-s", "0.5",
    ]  # fmt: skip
    learners = subprocess.Popen(command, cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    output = _Output(learners)
    keys = KeySettings(signing_key_file=tmp_path / "private" / "tamiyo.key",
                       trusted_keys_dir=tmp_path / "trusted")  # fmt: skip
    keyring = keys.load_keyring(ROLES)
    tamiyo = Bus(open_redis(server_url, oona), oona, keys.load_signer(), source="tamiyo")
    try:
        serving = ServingPolicy(PROFILES[Profile.SMALL])
        holder = holder_for(serving, version=1)
        listener = PolicyUpdateListener(tamiyo, PolicyUpdateTransaction(holder, keyring), keyring)
        output.wait_for("rank start", lambda lines: sum("running from" in x for x in lines) == 2)
        for segment in _segments(serving):
            await tamiyo.publish(pb.MESSAGE_TYPE_TRAJECTORY, segment.SerializeToString(),
                                 stream=Stream.TRAJECTORIES)  # fmt: skip
        output.wait_for("published policy", lambda _: _published(output) >= 1)
        await listener.consumer.drain()
        assert holder.current().version >= 2  # applied: above the experience's version 1

        consumers = await tamiyo.redis.xinfo_consumers(
            tamiyo.key(Stream.TRAJECTORIES), IMPALA_GROUP
        )
        names = {
            c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in consumers
        }
        assert names == {"impala-learner-1-rank0", "impala-learner-1-rank1"}
        for rank in range(2):
            assert output.statuses(rank)[-1]["segments_consumed"] > 0
            assert output.statuses(rank)[-1]["updates"] >= 1
        lag_p50, lag_p99 = output.statuses(0)[-1]["lag_p50_s"], output.statuses(0)[-1]["lag_p99_s"]
        assert 0 < lag_p50 <= lag_p99 < DEADLINE_S

        os.kill(output.pid(1), signal.SIGTERM)  # one rank told to stop: both stop
        assert learners.wait(timeout=DEADLINE_S) == 0
        output.wait_for(
            "both stopped", lambda lines: sum(x.endswith(": stopped") for x in lines) == 2
        )
        saved = load_latest(tmp_path / "data" / "impala" / "checkpoints")  # flushed at exit
        assert saved is not None and saved.step >= 1
    finally:
        if learners.poll() is None:
            learners.kill()
        await tamiyo.close()


def _published(output: _Output) -> int:
    statuses = output.statuses(0)
    return statuses[-1]["policies_published"] if statuses else 0
