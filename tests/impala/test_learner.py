"""The V-trace learner on actors' segments: repeated updates on one batch fit the
critic to its targets; the K-th update goes through the gate (passed: a newer version,
rejected: back to the running weights, counted and evented); with the learning breaker
open an update is refused, consumes nothing and nothing is published."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from leyline_vocab.events import BreakerName, EventKind
from oona.breaker import BreakerSettings, CircuitBreaker
from oona.events import BufferedEventSink
from tamiyo_bus.impala.learner import ImpalaLearner
from tamiyo_bus.learning.guard import LearningGuard, LearningGuardSettings, LearningOutcome

from .helpers import actor_segments, impala_settings, initial_policy


def test_updates_on_a_fixed_batch_fit_the_critic_to_its_targets(tmp_path: Path) -> None:
    segments = actor_segments(initial_policy(), runs=4)
    learner = ImpalaLearner(impala_settings(tmp_path, updates_per_publish=1_000), initial_policy())
    first = learner.update(segments)
    for _ in range(15):
        last = learner.update(segments)
    assert first.outcome is LearningOutcome.APPLIED and first.transitions > 40
    assert last.value_loss < 0.5 * first.value_loss
    assert learner.progress.updates == 16
    assert learner.progress.transitions_learnt == 16 * first.transitions


def test_every_kth_update_is_judged_passed_ones_get_a_newer_version(tmp_path: Path) -> None:
    segments = actor_segments(initial_policy(), runs=4, version=3)
    settings = impala_settings(tmp_path, updates_per_publish=2)
    lenient = replace(settings.gate, sim_evaluation=False, value_error_tolerance=1e6, max_kl=1.0)
    learner = ImpalaLearner(replace(settings, gate=lenient), initial_policy())
    for segment in segments[:6]:
        learner.hold_out(segment)
    assert learner.update(segments[6:]).verdict is None
    second = learner.update(segments[6:])
    assert second.verdict is not None and second.verdict.passed
    assert second.candidate is not None and second.candidate.version == 4  # above the seen 3
    assert learner.progress.running_version == 4 and learner.progress.candidates_published == 1


def test_a_rejected_candidate_returns_to_the_running_weights(tmp_path: Path) -> None:
    segments = actor_segments(initial_policy(), runs=4)
    settings = impala_settings(tmp_path, updates_per_publish=1)
    strict = replace(settings.gate, sim_evaluation=False, max_kl=1e-12)
    events = BufferedEventSink()
    learner = ImpalaLearner(replace(settings, gate=strict), initial_policy(), events=events)
    for segment in segments[:6]:
        learner.hold_out(segment)
    update = learner.update(segments[6:])
    assert update.verdict is not None and not update.verdict.passed and update.candidate is None
    for name, weights in initial_policy().state_dict().items():
        torch.testing.assert_close(learner.policy.state_dict()[name], weights)
    assert learner.progress.candidates_rejected == 1 and learner.progress.running_version == 0
    assert [e.name for e in events.drain()] == [EventKind.POLICY_CANDIDATE_REJECTED]


def test_with_the_breaker_open_an_update_is_refused_and_nothing_is_proposed(
    tmp_path: Path,
) -> None:
    breaker = CircuitBreaker(BreakerName.LEARNING, BreakerSettings(failure_threshold=1,
                                                                   cooldown_ms=1e9))  # fmt: skip
    guard = LearningGuard(breaker, lambda: False, LearningGuardSettings(max_grad_norm=0.5))
    learner = ImpalaLearner(impala_settings(tmp_path, updates_per_publish=1), initial_policy(),
                            guard=guard)  # fmt: skip
    before = {k: v.clone() for k, v in learner.policy.state_dict().items()}
    breaker.record_failure()
    update = learner.update(actor_segments(initial_policy(), runs=2))
    assert update.refused and update.outcome is LearningOutcome.BREAKER_OPEN
    assert update.candidate is None and update.verdict is None
    assert learner.progress.updates == 0 and learner.progress.transitions_learnt == 0
    for name, weights in before.items():
        torch.testing.assert_close(learner.policy.state_dict()[name], weights)
