"""The learned default policy shipped in the package: it still fits the code, it loads,
and it decides on a real run's packets with the statistics it was trained with."""

from __future__ import annotations

from pathlib import Path

from oona.events import BufferedEventSink
from oona.keys import Signer
from tamiyo_bus import TamiyoSettings, build_tamiyo
from tamiyo_bus.policy.default import default_policy_card, load_default_policy
from tamiyo_bus.policy.features import NormalizerSettings
from tamiyo_bus.policy.profiles import PROFILES, Profile
from tamiyo_bus.policy.reference import architecture_id
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.settings import DecisionMode, StepSettings
from tamiyo_bus.tolaria.models import host_topology
from tamiyo_bus.urza.store import candidate_blueprints
from tests.integration.helpers import assemble, trainer
from tests.policy.helpers import UNTRAINED_RISK_HEAD

PACKAGE = Path(__file__).resolve().parents[2] / "tamiyo_bus" / "policy" / "default"


def test_the_shipped_policy_fits_this_code_or_says_how_to_retrain_it() -> None:
    card = default_policy_card()
    fresh = ServingPolicy(PROFILES[Profile(card["profile"])])
    retrain = (
        "the policy's inputs or dimensions changed since the default policy was trained: "
        f"retrain and ship it with `{card['command']}`, then commit "
        "tamiyo_bus/policy/default/"
    )
    assert card["architecture_id"] == architecture_id(fresh), retrain
    assert card["registry_digest"] == registry_digest(), retrain


def test_the_shipped_files_are_small_and_the_card_is_complete() -> None:
    card = default_policy_card()
    # The small profile's 2.0 M parameters in float32 (8.1 MB), the statistics beside
    # them, and no optimiser state (which would double it).
    assert (PACKAGE / "policy.safetensors").stat().st_size < 10 * 2**20
    for key in ("command", "seed", "git_commit", "control_bench", "greedy_mean"):
        assert card[key] not in ("", None), key
    assert card["control_bench"]["ratio_learned_over_heuristic"] > 0


def test_the_default_policy_decides_on_a_real_run(tmp_path: Path) -> None:
    default = load_default_policy("cpu")
    current = default.holder.current()
    assert (current.policy_id, current.architecture_id) == (
        default.card["policy_id"],
        default.card["architecture_id"],
    )
    signer = Signer.generate()
    parts = assemble(tmp_path, signer)
    topology = host_topology(parts.model)
    tamiyo = build_tamiyo(
        TamiyoSettings(
            StepSettings(
                decision_mode=DecisionMode.INLINE,
                decision_every_steps=5,
                step_deadline_ms=5_000.0,  # a loaded machine must not turn decisions into timeouts
                inference_budget_ms=2_500.0,
            ),
            UNTRAINED_RISK_HEAD,  # PPO does not train the risk head
            normalizer=NormalizerSettings(update=False),
        ),
        topology=topology,
        blueprints=parts.store,
        candidates=candidate_blueprints(parts.store, topology),
        signer=signer,
        holder=default.holder,
        normalizer=default.normalizer,
        events=BufferedEventSink(),
    )
    tamiyo.start()
    try:
        trainer(parts, tamiyo.controller, max_steps=30).run()
        assert tamiyo.wait_idle(10.0)
    finally:
        tamiyo.close()
    assert tamiyo.builder.normalizer.snapshot is default.normalizer  # kept as trained
    stats = tamiyo.controller.stats
    assert stats.calls >= 5 and stats.decided == stats.calls
    assert stats.timeouts == stats.errors == stats.refused == 0
