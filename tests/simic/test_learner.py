"""The learner on joined experience (simulated runs through Tamiyo's encoder): PPO
updates fill the replay, a candidate passes the gate under a newer version, a
candidate made worse on purpose is rejected, counted and evented, an open breaker
pauses it, missing halves expire, and a restart resumes where the checkpoint was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from leyline_vocab.events import EventKind
from oona.events import BufferedEventSink
from tamiyo_bus.simic.gate import Rejection
from tamiyo_bus.simic.learner import LearnerStats, SimicLearner, Waiting
from tamiyo_bus.simic.simulated import SimulatedExperience
from tamiyo_bus.simic.store import Consumed, ExperienceStore

from .helpers import fill, initial_policy, learner_settings, simulated


@pytest.fixture(scope="module")
def experience() -> SimulatedExperience:
    return simulated(initial_policy(), runs=4)


def _learner(data_dir: Path, **overrides: object) -> tuple[SimicLearner, BufferedEventSink,
                                                            list[LearnerStats]]:  # fmt: skip
    events, stats = BufferedEventSink(), []
    settings = learner_settings(data_dir, **overrides)
    store = ExperienceStore(settings.store_path)
    learner = SimicLearner(settings, store, initial_policy(), events=events, sink=stats.append)
    return learner, events, stats


def test_an_update_learns_from_joined_decisions_and_a_passed_candidate_is_newer(
    tmp_path: Path, experience: SimulatedExperience
) -> None:
    learner, events, stats = _learner(tmp_path)
    fill(learner.store, experience, now_s=0.0)
    trainable = sum(1 for d in learner.store.pending_chains() for _ in d[1])  # all pending

    result = learner.cycle()

    assert result.update is not None and result.update.applied_steps > 0
    held_out = len(learner.store.held_out_decisions(1_000))
    assert held_out > 0 and len(learner.replay) == trainable - held_out - _waiting(learner)
    assert result.verdict is not None and result.verdict.passed, result.verdict
    assert result.candidate is not None and result.candidate.version == 2  # experience ran v1
    assert learner.progress.running_version == learner.progress.published_version == 2
    assert [e.name for e in events.drain()] == [EventKind.POLICY_CANDIDATE_PUBLISHED]
    assert stats[0].ppo is not None and stats[0].progress.updates == 1
    assert stats[-1].verdict == result.verdict
    learner.store.close()


def _waiting(learner: SimicLearner) -> int:
    """Trainable decisions still pending (the runs' ends came with the last segments, so
    none wait for a successor; none wait for a report either)."""
    return learner.store.ready()[0]


def test_a_candidate_made_worse_on_purpose_is_rejected_counted_and_evented(
    tmp_path: Path, experience: SimulatedExperience
) -> None:
    learner, events, stats = _learner(tmp_path, updates_per_candidate=2)
    fill(learner.store, experience, now_s=0.0)
    assert learner.cycle().candidate is None  # one update: no candidate yet
    running = {k: v.clone() for k, v in learner.running.state_dict().items()}
    with torch.no_grad():
        for parameter in learner.policy.parameters():
            parameter.add_(torch.randn_like(parameter) * 3.0)

    verdict, candidate = learner.propose()

    assert candidate is None and verdict is not None
    assert {Rejection.KL, Rejection.VALUE_ERROR} <= set(verdict.rejections)
    assert learner.progress.candidates_rejected == 1
    assert learner.progress.published_version == 0
    (rejected,) = [e for e in events.drain() if e.name == EventKind.POLICY_CANDIDATE_REJECTED]
    assert "kl" in rejected.attributes["reasons"]
    for name, value in learner.policy.state_dict().items():  # back to the running policy
        assert torch.equal(value, running[name])
    assert stats[-1].progress.candidates_rejected == 1
    learner.store.close()


def test_an_open_learning_breaker_pauses_the_learner(
    tmp_path: Path, experience: SimulatedExperience
) -> None:
    learner, _, _ = _learner(tmp_path)
    fill(learner.store, experience, now_s=0.0)
    for _ in range(learner.guard.breaker.settings.failure_threshold):
        learner.guard.breaker.record_failure()

    result = learner.cycle()

    assert result.update is None and Waiting.BREAKER in result.waiting_for
    assert Waiting.BREAKER in learner.health().waiting_for
    assert learner.progress.updates == 0 and learner.store.ready()[0] > 0
    learner.store.close()


def test_missing_reports_and_orphan_reports_expire_and_are_counted(
    tmp_path: Path, experience: SimulatedExperience
) -> None:
    learner, _, _ = _learner(tmp_path, report_wait_s=60.0, refused_after_end_s=1_000.0)
    half = len(experience.reports) // 2
    orphan = experience.reports[0].__class__(report_id="r-x", command_id="never-decided")
    fill(learner.store, SimulatedExperience(experience.segments, [*experience.reports[:half],
                                                                  orphan]), now_s=0.0)  # fmt: skip
    learner.join(now_s=1.0)
    assert Waiting.REPORTS in learner.health().waiting_for or learner.health().ready_decisions
    assert learner.health().awaiting_reports == len(experience.reports) - half

    learner.join(now_s=61.0)

    counts = learner.store.counts()
    assert counts["expired_no_report"] == len(experience.reports) - half
    assert counts["reports_unmatched"] == 1
    assert counts["joined"] + counts["expired_no_report"] == counts["decisions_stored"]
    learner.store.close()


def test_a_restart_resumes_weights_optimiser_and_progress_and_puts_back_unlearnt_decisions(
    tmp_path: Path, experience: SimulatedExperience
) -> None:
    learner, _, _ = _learner(tmp_path)
    fill(learner.store, experience, now_s=0.0)
    first = learner.cycle()
    assert first.candidate is not None
    more = simulated(initial_policy(), runs=2, seed=5, version=first.candidate.version)
    fill(learner.store, more, now_s=10.0)
    learner.join(now_s=10.0)
    unlearnt = learner.store.complete_decisions(1_000)
    # a crash after the store marked a batch used, before the checkpoint took it
    learner.store.mark_used([Consumed(d.key) for d in unlearnt], learner.progress.batches + 1)
    weights = {k: v.clone() for k, v in learner.policy.state_dict().items()}
    moments = {
        i: s["exp_avg"].clone() for i, s in learner.ppo.optimizer.state_dict()["state"].items()
    }
    progress = learner.progress
    learner.store.close()

    resumed, _, _ = _learner(tmp_path)

    assert resumed.progress == progress
    for name, value in resumed.policy.state_dict().items():
        assert torch.equal(value, weights[name])
    restored = resumed.ppo.optimizer.state_dict()["state"]
    assert moments and all(torch.equal(restored[i]["exp_avg"], m) for i, m in moments.items())
    assert resumed.store.ready()[0] + resumed.store.ready()[1] == len(unlearnt)
    second = resumed.cycle()
    assert second.candidate is None or second.candidate.version > first.candidate.version
    assert resumed.progress.updates == progress.updates + 1
    resumed.store.close()
