"""Shared construction for the policy and step-path tests."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from leyline_pb import leyline_pb2 as pb
from oona.events import BufferedEventSink
from oona.keys import UNRESTRICTED, Keyring, Signer
from tamiyo_bus import Tamiyo, TamiyoSettings, build_tamiyo
from tamiyo_bus.decision_telemetry import DecisionTelemetry
from tamiyo_bus.experience.recorder import TrajectorySink
from tamiyo_bus.policy.features import NormalizerSettings
from tamiyo_bus.policy.graph import GraphBuilder
from tamiyo_bus.policy.reference import PolicyConfig, architecture_id
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.risk import RiskSettings, Thresholds
from tamiyo_bus.security.commands import CommandVerifier
from tamiyo_bus.security.policy_update import PolicyHolder, RunningPolicy
from tamiyo_bus.settings import DecisionMode, StepSettings
from tamiyo_bus.step import StepController
from tamiyo_bus.urza_client import BlueprintCatalog, CachedCatalog
from tamiyo_bus.worker import QueueWorker
from tests import states as synthetic
from tests.states import StaticBlueprintCatalog

SMALL = PolicyConfig(hidden_dim=32, gat_heads=4, gat_head_dim=8, head_hidden_dim=32)
# Deadlines for tests that assert decisions, not timing: the suite shares the machine.
RELAXED = StepSettings(
    decision_mode=DecisionMode.INLINE, step_deadline_ms=5_000.0, inference_budget_ms=1_000.0
)
# The risk engine of the step-path tests: the random policies' risk heads say nothing, so
# their expected severity is not a signal; every other signal is gated as in a run.
UNTRAINED_RISK_HEAD = RiskSettings(
    thresholds=Thresholds(policy_risk_severity_base=1.0, policy_risk_severity_emergency=1.01)
)


class Collect:
    def __init__(self) -> None:
        self.records: list[DecisionTelemetry] = []

    def publish(self, telemetry: DecisionTelemetry) -> None:
        self.records.append(telemetry)


def holder_for(policy: ServingPolicy, version: int = 1) -> PolicyHolder:
    return PolicyHolder(
        RunningPolicy(policy, "test-policy", version, architecture_id(policy), registry_digest())
    )


@dataclass
class Stack:
    """A started Tamiyo from ``build_tamiyo``, the key that signs its commands and a
    verifier that trusts it, and the sink its decision telemetry reaches."""

    tamiyo: Tamiyo
    signer: Signer
    verifier: CommandVerifier
    sink: Collect
    size: synthetic.StateSize
    rng: random.Random = field(default_factory=lambda: random.Random(3))

    @property
    def controller(self) -> StepController:
        return self.tamiyo.controller

    @property
    def holder(self) -> PolicyHolder:
        return self.tamiyo.holder

    @property
    def builder(self) -> GraphBuilder:
        return self.tamiyo.builder

    @property
    def catalog(self) -> CachedCatalog:
        return self.tamiyo.catalog

    @property
    def publisher(self) -> QueueWorker[DecisionTelemetry]:
        assert self.tamiyo.telemetry is not None
        return self.tamiyo.telemetry

    def packet(self, step: int = 1000) -> pb.SystemStatePacket:
        packet = synthetic.packet(self.size, self.builder.topology, self.rng, step=step)
        packet.training_loss = 1.0  # synthetic losses are random draws: hold them steady
        return packet

    def verify(self, command: pb.AdaptationCommand) -> None:
        """A NO_OP is unsigned (it can change nothing); anything else must carry a valid
        signature of ours (RejectedMessage otherwise)."""
        if command.command_type == pb.COMMAND_TYPE_NO_OP:
            assert not command.HasField("signature")
        else:
            self.verifier.verify(command)


def make_stack(
    *,
    policy: ServingPolicy | None = None,
    settings: StepSettings = RELAXED,
    risk: RiskSettings | None = None,
    size: synthetic.StateSize = synthetic.REFERENCE_SIZE,
    catalog: BlueprintCatalog | None = None,
    candidates: Sequence[str] | None = None,
    normalizer_update: bool = False,
    prefetch: bool = True,
    seed: int = 0,
    experience: TrajectorySink | None = None,
) -> Stack:
    """A started Tamiyo on a synthetic host; without ``prefetch`` the first step finds
    Urza's answer for the candidates not yet in (it was asked at start, not awaited)."""
    # Low-risk blueprints, so that the gate lets the policy's seed actions through.
    static = StaticBlueprintCatalog(
        dataclasses.replace(entry, risk=0.1) for entry in synthetic.catalogue(size)
    )
    ids = tuple(candidates) if candidates is not None else static.ids()
    signer = Signer.generate()
    sink = Collect()
    tamiyo = build_tamiyo(
        TamiyoSettings(
            settings,
            risk or UNTRAINED_RISK_HEAD,
            normalizer=NormalizerSettings(update=normalizer_update),
        ),
        topology=synthetic.topology(size),
        blueprints=catalog or static,
        candidates=ids,
        signer=signer,
        holder=holder_for(policy or ServingPolicy(SMALL)),
        seed=seed,
        telemetry=sink,
        experience=experience,
        events=BufferedEventSink(),
    ).start(prefetch_timeout_s=10.0 if prefetch else 0.0)
    return Stack(
        tamiyo,
        signer,
        CommandVerifier(Keyring.of(signer.public_key(), role=UNRESTRICTED)),
        sink,
        size,
    )
