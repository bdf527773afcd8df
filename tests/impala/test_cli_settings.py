"""`tamiyo-bus impala-learner`'s flags reach the learner's settings, and the defaults
are the V-trace learner's own: its gate bounds the KL of K updates, not of one PPO
candidate."""

from __future__ import annotations

from tamiyo_bus.impala.settings import ImpalaSettings
from tamiyo_bus.simic.gate import ValidationGateSettings
from weatherlight.cli import build_parser
from weatherlight.impala_cli import learner_settings


def test_the_learners_gate_bounds_the_kl_of_k_updates() -> None:
    assert ImpalaSettings().gate.max_kl > ValidationGateSettings().max_kl


def test_the_pacing_and_gate_flags_reach_the_settings() -> None:
    parser = build_parser()
    default = learner_settings(ImpalaSettings(), parser.parse_args(["impala-learner"]))
    assert default == ImpalaSettings()
    flags = ["impala-learner", "--buffer-max-segments", "8", "--batch-segments", "8",
             "--max-kl", "0.5", "--value-error-tolerance", "2.0"]  # fmt: skip
    chosen = learner_settings(ImpalaSettings(), parser.parse_args(flags))
    assert (chosen.buffer_max_segments, chosen.batch_segments) == (8, 8)
    assert (chosen.gate.max_kl, chosen.gate.value_error_tolerance) == (0.5, 2.0)
