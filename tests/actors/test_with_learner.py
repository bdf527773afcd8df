"""Four actor processes of the `tamiyo-bus actor` command and a V-trace learner on one
embedded server: the learner learns from their segments and every actor plays the
policies it publishes; an actor killed mid-run (SIGKILL) does not stall the learner,
which keeps updating from the others."""

from __future__ import annotations

import signal
from pathlib import Path

from tamiyo_bus.impala.service import ImpalaLearnerService
from tests.actors.processes import actors, learn_until, learner_settings, progress_lines
from weatherlight.role_keys import RoleKeys

ACTORS = 4
UPDATES_BEFORE_KILL = 4
UPDATES_AFTER_KILL = 4
TIMEOUT_S = 120.0


async def test_actors_play_the_learners_policies_and_a_killed_one_does_not_stall_it(
    server_url_alone: str, tmp_path: Path
) -> None:
    url = server_url_alone
    keys = RoleKeys.create(tmp_path / "keys")
    killed_at: list[int] = []
    with actors(url, tmp_path / "keys", tmp_path, ACTORS) as started:

        def kill_then_learn_on(service: ImpalaLearnerService) -> bool:
            updates = service.learner.progress.updates
            if not killed_at and updates >= UPDATES_BEFORE_KILL:
                started[0].send_signal(signal.SIGKILL)
                killed_at.append(updates)
            return bool(killed_at) and updates >= killed_at[0] + UPDATES_AFTER_KILL

        learner = await learn_until(url, keys, learner_settings(tmp_path / "impala"),
                                    kill_then_learn_on, timeout_s=TIMEOUT_S)  # fmt: skip
        assert started[0].wait() == -signal.SIGKILL
        for process in started[1:]:
            assert process.poll() is None  # still playing
            process.send_signal(signal.SIGTERM)
        assert [process.wait(timeout=60) for process in started[1:]] == [0] * (ACTORS - 1)

    assert killed_at, "the learner never reached its updates before the kill"
    assert learner.learner.progress.updates >= killed_at[0] + UPDATES_AFTER_KILL
    assert learner.learner.progress.candidates_published >= 1
    for i in range(1, ACTORS):
        rows = progress_lines(tmp_path / f"actor-{i}.log")
        versions = [int(str(row["policy_version"])) for row in rows]
        assert versions[0] == 0 and max(versions) >= 1  # played a policy of the learner's
        assert versions == sorted(versions)
        assert rows[-1]["policy_updates_refused"] == {}
