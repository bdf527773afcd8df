"""Who decides in the demo: the learned default (served with its statistics fixed and
its untrained risk head not counted), an untrained network, the baselines, or a policy
checkpoint of any profile; anything else is refused with the choices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tamiyo_bus.policy.checkpoint import save_checkpoint
from tamiyo_bus.policy.features import NormalizerSnapshot
from tamiyo_bus.policy.profiles import PROFILES, Profile
from tamiyo_bus.policy.reference import ReferencePolicy, architecture_id
from weatherlight.demo.assembly import RunSpec
from weatherlight.demo.policies import LEARNED, NAMES, UNTRAINED, choose_policy

CPU = torch.device("cpu")


def test_the_learned_default_is_served_as_it_was_trained() -> None:
    spec = RunSpec()
    choice = choose_policy(LEARNED, CPU, spec)
    assert choice.trained and choice.normalizer is not None
    assert choice.description.startswith("the learned default ppo-")
    served = choice.serve(spec)
    assert served.risk.weights.policy_risk == 0.0  # PPO leaves the risk head untrained
    assert served.risk.weights.loss_delta == spec.risk.weights.loss_delta  # the rest gates
    assert served.tamiyo.normalizer.update is False


@pytest.mark.parametrize("name", [UNTRAINED, "random", "heuristic", "none"])
def test_untrained_choices_are_served_unchanged(name: str) -> None:
    spec = RunSpec()
    choice = choose_policy(name, CPU, spec)
    assert not choice.trained and choice.normalizer is None
    assert choice.serve(spec) == spec


@pytest.mark.parametrize("profile", list(Profile))
def test_a_checkpoint_of_any_profile_is_served_with_its_statistics(
    tmp_path: Path, profile: Profile
) -> None:
    torch.manual_seed(3)
    policy = ReferencePolicy(PROFILES[profile])
    path = tmp_path / "policy.safetensors"
    save_checkpoint(path, policy, NormalizerSnapshot.initial(), policy_id="mine", policy_version=7)
    choice = choose_policy(str(path), CPU, RunSpec())
    running = choice.holder.current()
    assert (running.policy_id, running.version) == ("mine", 7)
    assert running.architecture_id == architecture_id(policy)
    assert choice.trained and choice.normalizer is not None


def test_anything_else_is_refused_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=", ".join(NAMES)):
        choose_policy(str(tmp_path / "missing.safetensors"), CPU, RunSpec())
