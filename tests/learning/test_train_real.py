"""`tamiyo-bus train --env real`: real runs one after another on one bus, Tamiyo's
experience and field reports reaching Simic's learner, whose candidate comes back as a
signed update the next runs decide with; baselines on the same seeds; the report. And
the pure parts: a run's return and the quarter comparison."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus import Baseline
from tamiyo_bus.learning.reward import Progress, RewardSettings, interval_terms, reward
from tamiyo_bus.policy.default import default_policy_card
from weatherlight.cli import main
from weatherlight.settings import ENV_REDIS_URL, ENV_URZA_DB, SystemSettings
from weatherlight.training.outcomes import quarter_change, run_return
from weatherlight.training.real import LEARNED, RealTrainingSettings, real_learner, train_real
from weatherlight.training.real_cli import OUTCOMES, REPORT, SUMMARY


def test_the_last_quarter_is_compared_with_the_first() -> None:
    q = quarter_change([0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0])
    assert (q.first_mean, q.last_mean, q.change, q.runs_per_quarter) == (0.0, 3.0, 3.0, 2)
    assert q.low == q.high == 3.0 and q.higher
    mixed = quarter_change([0.0, 2.0, 9.0, 9.0, 9.0, 9.0, 1.0, 1.0])
    assert mixed.change == 0.0 and mixed.low < 0.0 < mixed.high and not mixed.higher


def test_fewer_than_four_runs_compare_nothing() -> None:
    q = quarter_change([1.0, 2.0, 3.0])
    assert q.runs_per_quarter == 0 and math.isnan(q.change) and not q.higher


def _packet(loss: float, accuracy: float) -> pb.SystemStatePacket:
    return pb.SystemStatePacket(training_loss=loss, validation_accuracy=accuracy)


def test_a_runs_return_is_its_intervals_rewards_less_the_risk_its_reports_saw() -> None:
    settings = RewardSettings()
    packets = [_packet(1.0, 0.5), _packet(0.8, 0.6)]
    final = _packet(0.5, 0.7)
    whole = reward(
        interval_terms(Progress.of_packet(packets[0]), Progress.of_packet(final)), settings
    )
    assert run_return(packets, final, [], settings) == pytest.approx(whole)
    rolled_back = pb.FieldReport(metrics={"rollbacks": 2.0, "accuracy_change": 0.3})
    charged = run_return(packets, final, [rolled_back], settings)
    assert charged == pytest.approx(whole - 2 * settings.rollback_penalty)


def test_learned_runs_feed_the_learner_and_decide_with_its_update_against_a_baseline(
    tmp_path: Path, server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_REDIS_URL, server_url)
    monkeypatch.setenv(ENV_URZA_DB, str(tmp_path / "urza.sqlite"))
    base = real_learner()
    eager = replace(  # learn from the first run: an update and a candidate from a few decisions
        base,
        batch_min_decisions=4,
        replay_sample_decisions=0,
        updates_per_candidate=1,
        held_out_fraction=0.25,
        gate=replace(base.gate, min_held_out_decisions=1, sim_evaluation=False, max_kl=10.0,
                     value_error_tolerance=1e6),
    )  # fmt: skip
    settings = RealTrainingSettings(
        runs=3, epochs=6, baselines=(Baseline.NONE,), learn_wait_s=60.0, learner=eager
    )
    result = train_real(settings, tmp_path / "real", SystemSettings.from_env())

    learned = [o for o in result.outcomes if o.arm == LEARNED]
    none = [o for o in result.outcomes if o.arm == Baseline.NONE.value]
    assert [o.seed for o in learned] == [o.seed for o in none] == [0, 1, 2]
    assert all(o.decisions > 0 for o in result.outcomes)
    assert all(o.seeds_germinated == 0 and o.field_reports == 0 for o in none)
    shipped = default_policy_card()["policy_version"]
    assert learned[0].policy_version_start == shipped  # the learned arm starts as the demo
    assert learned[-1].policy_version_start > shipped  # the learner's update decided later
    assert result.learner_health is not None
    assert result.learner_health["candidates_published"] >= 1  # type: ignore[operator]


def test_the_command_writes_outcomes_summary_and_report(
    tmp_path: Path,
    server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(ENV_REDIS_URL, server_url)
    monkeypatch.setenv(ENV_URZA_DB, str(tmp_path / "urza.sqlite"))
    argv = ["train", "--env", "real", "--runs", "2", "--epochs", "2", "--baselines", "none"]
    assert main([*argv, "--learn-wait-s", "5", "--out", str(tmp_path / "out")]) == 0
    (run_dir,) = (tmp_path / "out").iterdir()
    lines = [json.loads(line) for line in (run_dir / OUTCOMES).read_text().splitlines()]
    assert [(line["arm"], line["index"]) for line in lines] == [
        ("learned", 0), ("learned", 1), ("none", 0), ("none", 1)
    ]  # fmt: skip
    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["runs_per_arm"] == 2 and set(summary["mean_return"]) == {"learned", "none"}
    report = (run_dir / REPORT).read_text()
    assert report.count("<svg") == 4 and "<polyline" in report
    printed = capsys.readouterr().out
    assert "learned run 2/2" in printed and f"report      {run_dir / REPORT}" in printed
