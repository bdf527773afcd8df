"""Four `tamiyo-bus actor` processes and a V-trace learner on one embedded server improve
the return: the policy the learner last published earns more than the start policy on
simulated runs that neither the actors nor the learner ever played.

The runs are the actors' (``processes.EPOCHS`` x ``STEPS_PER_EPOCH``: 30 decisions), on
the actors' feature statistics, and both policies sample their actions as the actors
do (V-trace improves the policy the actors play; its greedy choice can stay NO_OP for
longer), from one seeded generator, so the two returns are paired run by run.

How long to learn is decided as a validation gate would: every ``CHECK_EVERY_UPDATES``
the published policy plays validation runs (their own seed), and learning stops once it
beats the start there by ``TAKE_OFF_GAIN``, or after ``MAX_UPDATES``; the verdict is
then taken on the test runs, which nothing chose by: the paired gain's 95 % interval
must lie above 0.

Learning from a fresh policy is a stochastic process: the actors' play and the order in
which their segments reach the learner vary from run to run. Most runs beat the start
at the first check, and about one in five had not by ``MAX_UPDATES`` (docs/learning.md,
"Does it learn?"). So the scenario gets up to ``ATTEMPTS`` independent runs (a fresh
server, actors and learner each), and one must improve the return; what every run did
is printed (``-rP``). A learner that does not learn on the bus fails them all.

The actors are paced: the learner lags them at most by the trajectories stream's cap,
its own buffer and the last episode each actor holds (docs/scale-out.md). With the
stream's default cap (1,024), 40 updates learnt from segments of versions 0 and 1 only,
and gained a quarter of what paced runs gain."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tamiyo_bus.actors.loop import start_policy
from tamiyo_bus.impala.service import ImpalaLearnerService
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
    own_server,
    progress_lines,
)
from weatherlight.role_keys import RoleKeys
from weatherlight.settings import ENV_TRAJECTORIES_MAX_ENTRIES

ACTORS = 4
CHECK_EVERY_UPDATES = 20
MAX_UPDATES = 100  # an attempt's
ATTEMPTS = 3
TIMEOUT_S = 600.0  # an attempt's
RUNS = 16  # validation and test runs alike
VALIDATION_SEED = 2_000
TEST_SEED = 1_000  # the actors play seeds 0..3
TAKE_OFF_GAIN = 0.3  # in mean return over the validation runs
ACTOR_SIM = SimSettings(epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH)
# Two of the learner's batches in the stream and one in its buffer; each actor holds at
# most its last episode (about 22 segments) in its queue (the backpressure rule).
STREAM_CAP_SEGMENTS = 16
BUFFER_SEGMENTS = 8


def sampled_returns(policy: ServingPolicy, seed: int) -> npt.NDArray[np.float64]:
    return episode_returns(
        [policy] * RUNS, ACTOR_SIM, seed=seed, greedy=False, normalizer=actor_statistics()
    )


def published_policy(service: ImpalaLearnerService, start: ServingPolicy) -> ServingPolicy:
    published = ServingPolicy(start.config)
    published.load_state_dict(service.learner.running.state_dict())
    return published


class UntilItBeatsTheStart:
    """The learner's stopping rule: the published policy's gain on the validation runs.
    It is checked in the event loop between the learner's updates (which run in a
    worker thread), so a check may read weights an update is replacing: that costs a
    check, never the verdict, which is taken once the learner stopped."""

    def __init__(self, start: ServingPolicy) -> None:
        self.start = start
        self.start_returns = sampled_returns(start, VALIDATION_SEED)
        self.checked_at = 0
        self.gains: list[tuple[int, float]] = []  # (updates, validation gain)

    def __call__(self, service: ImpalaLearnerService) -> bool:
        updates = service.learner.progress.updates
        if updates >= MAX_UPDATES:
            return True
        if updates < self.checked_at + CHECK_EVERY_UPDATES:
            return False
        self.checked_at = updates
        returns = sampled_returns(published_policy(service, self.start), VALIDATION_SEED)
        self.gains.append((updates, round(float((returns - self.start_returns).mean()), 3)))
        return self.gains[-1][1] > TAKE_OFF_GAIN


def interval_low(gain: npt.NDArray[np.float64]) -> float:
    """The lower end of the paired gain's 95 % interval (normal approximation)."""
    return float(gain.mean() - 1.96 * gain.std(ddof=1) / math.sqrt(len(gain)))


async def attempt(url: str, work: Path) -> tuple[bool, str]:
    """One run of the scenario on the server at ``url``: whether the published policy
    improved the return on the test runs, and what the run did."""
    keys = RoleKeys.create(work / "keys")
    settings = replace(learner_settings(work / "impala"), buffer_max_segments=BUFFER_SEGMENTS)
    start = start_policy(Profile.SMALL, settings.seed).current().module
    assert isinstance(start, ServingPolicy)
    until = UntilItBeatsTheStart(start)
    paced = {ENV_TRAJECTORIES_MAX_ENTRIES: str(STREAM_CAP_SEGMENTS)}
    with actors(url, work / "keys", work, ACTORS, environ=paced) as started:
        service = await learn_until(url, keys, settings, until, timeout_s=TIMEOUT_S)
        for process in started:
            process.terminate()
        assert [process.wait(timeout=60) for process in started] == [0] * ACTORS

    learner = service.learner
    assert until.gains, f"the learner ran out of time: {learner.progress}"
    assert learner.progress.candidates_published >= 1
    logs = [progress_lines(work / f"actor-{i}.log") for i in range(ACTORS)]
    played = [max(int(str(row["policy_version"])) for row in log) for log in logs]
    assert min(played) >= 1, f"every actor plays a published policy: {played}"
    assert learner.progress.seen_version >= 1, (
        f"the learner learnt from published policies' play: {learner.progress}"
    )

    before = sampled_returns(start, TEST_SEED)
    after = sampled_returns(published_policy(service, start), TEST_SEED)
    gain = after - before
    outcome = (
        f"start {before.mean():.3f}, published v{learner.progress.running_version} "
        f"{after.mean():.3f}: gain {gain.mean():.3f} (95 % from {interval_low(gain):.3f}); "
        f"validation gains {until.gains}; actors shed "
        f"{[log[-1]['segments_shed'] for log in logs]}, waits ran out "
        f"{[log[-1]['backpressure_timeouts'] for log in logs]}; {learner.progress}"
    )
    return interval_low(gain) > 0, outcome


async def test_the_published_policy_beats_the_start_policy_on_unseen_runs(
    tmp_path: Path,
) -> None:
    outcomes = []
    for number in range(ATTEMPTS):
        with own_server() as url:
            improved, outcome = await attempt(url, tmp_path / f"attempt-{number}")
        outcomes.append(outcome)
        print(f"run {number + 1}: {outcome}")  # shown with -rP: every run is worth a record
        if improved:
            break
    assert improved, "no run improved the return:\n" + "\n".join(outcomes)
