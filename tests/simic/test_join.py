"""The reward of a field decision and the join of decisions with their successors and
field reports (pure): complete, terminal, acted with its report, and expiry of both
halves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.learning.gae import GAESettings, compute_gae
from tamiyo_bus.learning.reward import Progress, RewardSettings, RewardTerms
from tamiyo_bus.simic.advantages import chained_gae
from tamiyo_bus.simic.join import Completed, DecisionFacts, Expiry, JoinWaits, RunEnd, join_run
from tamiyo_bus.simic.reward import decision_reward

SETTINGS = RewardSettings()
WAITS = JoinWaits(report_wait_s=100.0, successor_wait_s=1_000.0, refused_after_end_s=10.0)
BEFORE = Progress(loss=2.0, accuracy=0.5, parameter_ratio=0.0)
AFTER = Progress(loss=1.0, accuracy=0.6, parameter_ratio=0.1)


def facts(
    step: int, *, acted: bool = False, report: RewardTerms | None = None,
    pending: bool = True, stored_s: float = 0.0, loss: float = 1.0,
) -> DecisionFacts:  # fmt: skip
    return DecisionFacts(step, acted, Progress(loss, 0.5, 0.0), stored_s, pending, report)


def test_the_reward_is_the_interval_reward_with_the_reports_risk_events() -> None:
    report = pb.FieldReport(metrics={"rollbacks": 1.0, "emergencies": 1.0,
                                     "isolation_violations": 2.0, "loss_change": -0.9})  # fmt: skip
    terms = RewardTerms.of_report(report)
    gain = math.log(2.0) + 0.1 - 0.1  # loss halved, accuracy +0.1, parameters +0.1
    penalties = 0.25 + 1.0 + 2 * 0.25  # the report's risk events; its own loss change is unused
    assert decision_reward(BEFORE, AFTER, terms, SETTINGS) == pytest.approx(gain - penalties)
    assert decision_reward(BEFORE, AFTER, None, SETTINGS) == pytest.approx(gain)


def test_a_decision_that_did_not_act_completes_once_its_successor_is_known() -> None:
    chain = [facts(10, loss=2.0), facts(20, loss=1.0)]
    joined = join_run(chain, None, now_s=1.0, waits=WAITS, reward_settings=SETTINGS)
    assert joined.completed == [Completed(10, pytest.approx(math.log(2.0)), next_step=20)]
    assert joined.expired == []  # the last one waits for its successor


def test_an_acted_decision_waits_for_its_report_then_completes_with_its_penalties() -> None:
    waiting = [facts(10, acted=True), facts(20)]
    assert (
        join_run(waiting, None, now_s=50.0, waits=WAITS, reward_settings=SETTINGS).completed == []
    )
    reported = [facts(10, acted=True, report=RewardTerms(rollbacks=1)), facts(20)]
    joined = join_run(reported, None, now_s=50.0, waits=WAITS, reward_settings=SETTINGS)
    assert joined.completed == [Completed(10, pytest.approx(-0.25), next_step=20)]


def test_the_last_decision_is_terminal_once_the_run_ended() -> None:
    chain = [facts(10, pending=False), facts(20, loss=2.0)]
    end = RunEnd(Progress(loss=1.0, accuracy=0.5, parameter_ratio=0.0), stored_s=0.5)
    joined = join_run(chain, end, now_s=1.0, waits=WAITS, reward_settings=SETTINGS)
    assert joined.completed == [Completed(20, pytest.approx(math.log(2.0)), next_step=None)]
    assert joined.completed[0].terminal


def test_an_acted_decision_without_its_report_expires_after_the_wait() -> None:
    chain = [facts(10, acted=True, stored_s=0.0), facts(20, stored_s=5.0)]
    joined = join_run(chain, None, now_s=100.0, waits=WAITS, reward_settings=SETTINGS)
    assert joined.expired == [(10, Expiry.NO_REPORT)]
    assert joined.completed == []


def test_a_decision_whose_successor_never_came_expires_after_its_wait() -> None:
    chain = [facts(10, stored_s=0.0)]
    early = join_run(chain, None, now_s=999.0, waits=WAITS, reward_settings=SETTINGS)
    assert early.expired == [] and early.completed == []
    late = join_run(chain, None, now_s=1_000.0, waits=WAITS, reward_settings=SETTINGS)
    assert late.expired == [(10, Expiry.NO_SUCCESSOR)]


def test_chained_gae_equals_gae_over_an_unbroken_episode() -> None:
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=6), rng.normal(size=6)
    terminal = np.array([False] * 5 + [True])
    continues = ~terminal
    settings = GAESettings(gamma=0.9, gae_lambda=0.8)
    chained = chained_gae(rewards, values, continues, np.zeros(6), terminal, settings)
    following = np.append(values[1:], 0.0)
    expected = compute_gae(rewards, values, following, terminal, np.zeros(6, bool), settings)
    np.testing.assert_allclose(chained.advantages, expected.advantages, rtol=1e-5)


def test_a_chain_cut_before_its_run_ended_bootstraps_from_its_successor() -> None:
    settings = GAESettings(gamma=0.5, gae_lambda=1.0)
    # two chains: [0, 1] cut (successor value 4), [2] terminal
    advantages = chained_gae(
        rewards=[1.0, 1.0, 1.0], values=[0.0, 0.0, 0.0], continues=[True, False, False],
        successor_values=[0.0, 4.0, 99.0], terminal=[False, False, True], settings=settings,
    ).advantages  # fmt: skip
    assert advantages[1] == pytest.approx(1.0 + 0.5 * 4.0)
    assert advantages[0] == pytest.approx(1.0 + 0.5 * advantages[1])
    assert advantages[2] == pytest.approx(1.0)  # terminal: 99 is never read
    with pytest.raises(ValueError, match="terminal"):
        chained_gae([0.0], [0.0], [True], [0.0], [True], settings)


def test_an_acted_decision_without_a_report_after_its_run_ended_was_refused() -> None:
    """Kasmina refused the command, so no window opened and no report comes: once the
    run has ended a while, the decision is joined as one that changed nothing."""
    chain = [facts(10, acted=True, loss=2.0), facts(20, loss=1.0)]
    end = RunEnd(Progress(loss=1.0, accuracy=0.5, parameter_ratio=0.0), stored_s=50.0)
    soon = join_run(chain, end, now_s=55.0, waits=WAITS, reward_settings=SETTINGS)
    assert [c.decision_step for c in soon.completed] == [20]  # 10 still waits its report
    later = join_run(chain, end, now_s=60.0, waits=WAITS, reward_settings=SETTINGS)
    assert later.completed[0] == Completed(10, pytest.approx(math.log(2.0)), next_step=20)
    assert later.expired == []
