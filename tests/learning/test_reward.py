"""The reward: hand-computed values, the field-report reading, the interval form and how
interval rewards add up."""

from __future__ import annotations

import itertools
import math

import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.learning.reward import (
    ISOLATION_VIOLATIONS_METRIC,
    Progress,
    RewardSettings,
    RewardTerms,
    interval_terms,
    report_reward,
    reward,
)
from tamiyo_bus.reports.windows import (
    MODEL_PARAMETERS_METRIC,
    SEED_PARAMETERS_METRIC,
    Decision,
    EpochEnd,
    EventKind,
    ObservedEvent,
    Window,
    WindowSettings,
    build_report,
)

DEFAULT = RewardSettings()  # weights 1, 1, 1; penalties 0.25, 1.0, 0.25


def test_every_term_by_hand() -> None:
    terms = RewardTerms(
        loss_change=-0.2,
        accuracy_change=0.05,
        parameter_ratio=0.04,
        rollbacks=1,
        emergencies=1,
        isolation_violations=2,
    )
    expected = -math.log(0.8) + 0.05 - 0.04 - 0.25 - 1.0 - 2 * 0.25
    assert reward(terms, DEFAULT) == pytest.approx(expected)
    weighted = RewardSettings(loss_weight=2.0, accuracy_weight=0.0, parameter_weight=10.0)
    assert reward(terms, weighted) == pytest.approx(
        2 * -math.log(0.8) - 10 * 0.04 - 0.25 - 1.0 - 0.5
    )


def test_unobserved_terms_count_zero_and_a_doubled_loss_costs_log_2() -> None:
    assert reward(RewardTerms(), DEFAULT) == 0.0
    assert reward(RewardTerms(loss_change=1.0), DEFAULT) == pytest.approx(-math.log(2.0))
    assert reward(RewardTerms(loss_change=math.nan, accuracy_change=math.inf), DEFAULT) == 0.0


def test_negative_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="weights"):
        RewardSettings(rollback_penalty=-1.0)


def _state(epoch: int, loss: float, accuracy: float, seed_params: float) -> pb.SystemStatePacket:
    state = pb.SystemStatePacket(
        training_run_id="run",
        current_epoch=epoch,
        validation_loss=loss,
        validation_accuracy=accuracy,
    )
    state.training_metrics[MODEL_PARAMETERS_METRIC] = 10_000.0
    seed = state.seed_states.add(seed_id="s0", stage=pb.SEED_STAGE_BLENDING)
    seed.metrics[SEED_PARAMETERS_METRIC] = seed_params
    return state


def test_a_field_report_is_read_as_the_window_saw_it() -> None:
    command = pb.AdaptationCommand(
        command_id="c1", command_type=pb.COMMAND_TYPE_SEED, target_seed_id="s0"
    )
    decision = Decision.from_command(command, _state(0, 0.5, 0.80, 500.0), 2)
    assert decision is not None
    window = Window(decision, 1, last_epoch=0)
    window.observe_epoch(EpochEnd.from_state(_state(2, 0.4, 0.83, 500.0)))
    window.observe_event(ObservedEvent("run", EventKind.ROLLBACK, "s0"))
    report, _ = build_report(window, WindowSettings(window_epochs=2), 0)
    report.metrics[ISOLATION_VIOLATIONS_METRIC] = 1.0
    terms = RewardTerms.of_report(report)
    assert terms == RewardTerms(
        loss_change=pytest.approx(-0.2),
        accuracy_change=pytest.approx(0.03),
        parameter_ratio=pytest.approx(0.05),
        rollbacks=1,
        isolation_violations=1,
    )
    expected = -math.log(0.8) + 0.03 - 0.05 - 0.25 - 0.25
    assert report_reward(report, DEFAULT) == pytest.approx(expected, abs=1e-6)


def test_progress_is_read_off_a_packet() -> None:
    packet = _state(1, 0.5, 0.8, 500.0)
    packet.training_loss = 0.7
    packet.seed_states.add(seed_id="s1", stage=pb.SEED_STAGE_CULLED).metrics[
        SEED_PARAMETERS_METRIC
    ] = 9_999.0  # a culled seed holds nothing
    assert Progress.of_packet(packet) == Progress(
        pytest.approx(0.7), pytest.approx(0.8), pytest.approx(0.05)
    )


def test_interval_rewards_add_up_to_the_reward_of_the_whole_span() -> None:
    chain = [
        Progress(2.0, math.nan, 0.0),
        Progress(1.5, 0.40, 0.02),
        Progress(1.2, 0.50, 0.05),
        Progress(0.9, 0.60, 0.01),
    ]
    rewards = [
        reward(interval_terms(a, b, rollbacks=int(i == 1)), DEFAULT)
        for i, (a, b) in enumerate(itertools.pairwise(chain))
    ]
    whole = reward(
        RewardTerms(
            loss_change=0.9 / 2.0 - 1.0,
            accuracy_change=0.60 - 0.40,  # from the first evaluation on
            parameter_ratio=0.01,  # the share the run ends with
            rollbacks=1,
        ),
        DEFAULT,
    )
    assert sum(rewards) == pytest.approx(whole)


def test_an_interval_charges_a_new_seed_and_refunds_a_culled_one() -> None:
    before, grown, culled = (
        Progress(1.0, 0.5, 0.0),
        Progress(1.0, 0.5, 0.1),
        Progress(1.0, 0.5, 0.0),
    )
    assert reward(interval_terms(before, grown), DEFAULT) == pytest.approx(-0.1)
    assert reward(interval_terms(grown, culled), DEFAULT) == pytest.approx(0.1)
