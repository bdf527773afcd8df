"""Four `tamiyo-bus actor` processes and a V-trace learner on one embedded server improve
the return: the policy the learner last published earns more than the start policy on
simulated runs that neither the actors nor the learner ever played.

The runs are the actors' (``processes.EPOCHS`` x ``STEPS_PER_EPOCH``: 30 decisions), on
the actors' feature statistics, and both policies sample their actions as the actors
do (V-trace improves the policy the actors play; its greedy choice can stay NO_OP for
longer), from one seeded generator, so the two returns are paired run by run.

The actors are paced: the learner lags them at most by the trajectories stream's cap,
its own buffer and every actor's publish queue (docs/scale-out.md). With the defaults
(1,024 + 128 + 256 an actor), 40 updates learnt from segments of versions 0 and 1 only,
and gained a quarter of what paced runs gain."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tamiyo_bus.actors.loop import start_policy
from tamiyo_bus.policy.profiles import Profile
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.sim.actor import actor_statistics
from tamiyo_bus.sim.returns import episode_returns
from tamiyo_bus.sim.settings import SimSettings
from tests.actors.processes import (
    EPOCHS,
    STEPS_PER_EPOCH,
    actors,
    learn_until,
    learner_settings,
    progress_lines,
)
from weatherlight.role_keys import RoleKeys
from weatherlight.settings import ENV_TRAJECTORIES_MAX_ENTRIES

ACTORS = 4
UPDATES = 80  # after 40, a third of the paced runs had not yet taken off
TIMEOUT_S = 400.0
EVALUATION_RUNS = 16
EVALUATION_SEED = 1_000  # the actors play seeds 0..3
MIN_GAIN = 0.3  # in mean return over the runs; paced runs gained 0.9-1.3
ACTOR_SIM = SimSettings(epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH)
# Two of the learner's batches in the stream, one in its buffer, and an episode (about
# 22 segments) in each actor's queue.
STREAM_CAP_SEGMENTS = 16
BUFFER_SEGMENTS = 8
QUEUE_SEGMENTS = 24


def sampled_returns(policy: ServingPolicy) -> npt.NDArray[np.float64]:
    return episode_returns(
        [policy] * EVALUATION_RUNS, ACTOR_SIM, seed=EVALUATION_SEED, greedy=False,
        normalizer=actor_statistics(),
    )  # fmt: skip


async def test_the_published_policy_beats_the_start_policy_on_unseen_runs(
    server_url_alone: str, tmp_path: Path
) -> None:
    url = server_url_alone
    keys = RoleKeys.create(tmp_path / "keys")
    settings = replace(learner_settings(tmp_path / "impala"), buffer_max_segments=BUFFER_SEGMENTS)
    paced = {ENV_TRAJECTORIES_MAX_ENTRIES: str(STREAM_CAP_SEGMENTS)}
    queue = ("--queue-segments", str(QUEUE_SEGMENTS))
    with actors(url, tmp_path / "keys", tmp_path, ACTORS, *queue, environ=paced) as started:
        service = await learn_until(
            url, keys, settings,
            lambda s: s.learner.progress.updates >= UPDATES, timeout_s=TIMEOUT_S,
        )  # fmt: skip
        for process in started:
            process.terminate()
        assert [process.wait(timeout=60) for process in started] == [0] * ACTORS

    learner = service.learner
    assert learner.progress.updates >= UPDATES, f"the learner ran out of time: {learner.progress}"
    assert learner.progress.candidates_published >= 1
    logs = [progress_lines(tmp_path / f"actor-{i}.log") for i in range(ACTORS)]
    played = [max(int(str(row["policy_version"])) for row in log) for log in logs]
    assert min(played) >= 1, f"every actor plays a published policy: {played}"
    assert learner.progress.seen_version >= learner.progress.running_version // 2, (
        f"the learner kept up with its actors: {learner.progress}"
    )

    start = start_policy(Profile.SMALL, settings.seed).current().module
    assert isinstance(start, ServingPolicy)
    published = ServingPolicy(start.config)
    published.load_state_dict(learner.running.state_dict())
    before, after = sampled_returns(start), sampled_returns(published)
    gain = after - before
    assert gain.mean() > MIN_GAIN, (
        f"start {before.mean():.3f}, published v{learner.progress.running_version} "
        f"{after.mean():.3f}: gain {gain.mean():.3f}; {learner.progress}"
    )
