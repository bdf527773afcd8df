"""Policy profiles: one network, two sizes; the architecture id names the size, so a
PolicyUpdate made for one is refused by the other, with both ids in the error."""

from __future__ import annotations

import pytest
import torch

from oona.errors import RejectedMessage
from oona.keys import UNRESTRICTED, Keyring, Signer
from tamiyo_bus import initial_policy
from tamiyo_bus.policy.profiles import PROFILES, Profile, default_profile
from tamiyo_bus.policy.reference import architecture_id
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.security.policy_update import build_policy_update
from tests.security.helpers import make_transaction


def test_small_is_the_cpu_default_and_full_the_cuda_default() -> None:
    assert default_profile(torch.device("cpu")) is Profile.SMALL
    assert default_profile(torch.device("cuda")) is Profile.FULL
    holder = initial_policy("cpu", seed=0)
    policy = holder.current().module
    assert isinstance(policy, ServingPolicy) and policy.config == PROFILES[Profile.SMALL]
    assert "sage128x2-gat4x16x2" in holder.current().architecture_id


def test_an_update_for_the_other_profile_is_refused_naming_both() -> None:
    holder = initial_policy("cpu", seed=0, profile=Profile.SMALL)
    signer = Signer.generate()
    transaction, metrics, _ = make_transaction(
        holder, Keyring.of(signer.public_key(), role=UNRESTRICTED)
    )
    full = ServingPolicy(PROFILES[Profile.FULL])
    running = holder.current()
    update = build_policy_update(
        full.state_dict(),
        policy_id="learner",
        version=2,
        architecture_id=architecture_id(full),
        registry_digest=running.registry_digest,
        signer=signer,
    )
    with pytest.raises(RejectedMessage) as rejected:
        transaction.apply(update)
    assert rejected.value.reason == "architecture_mismatch"
    assert architecture_id(full) in rejected.value.detail
    assert running.architecture_id in rejected.value.detail
    assert holder.current() is running  # the running policy is untouched
    assert metrics.count("policy_updates_rejected", reason="architecture_mismatch") == 1
