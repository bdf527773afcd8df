"""Shared construction for the policy and step-path tests."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.decision_telemetry import DecisionTelemetry, TelemetryPublisher
from tamiyo_bus.policy import synthetic
from tamiyo_bus.policy.features import RunningNormalizer
from tamiyo_bus.policy.graph import GraphBuilder
from tamiyo_bus.policy.reference import PolicyConfig, architecture_id
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.security.policy_update import PolicyHolder, RunningPolicy
from tamiyo_bus.settings import StepSettings
from tamiyo_bus.step import CommandGate, StepController
from tamiyo_bus.urza_client import BlueprintCatalog, CachedCatalog, StaticBlueprintCatalog

SMALL = PolicyConfig(hidden_dim=32, gat_heads=4, gat_head_dim=8, head_hidden_dim=32)
# Deadlines for tests that assert decisions, not timing: the suite shares the machine.
RELAXED = StepSettings(step_deadline_ms=5_000.0, inference_budget_ms=1_000.0)


class Ed25519TestSigner:
    """Signs with a real Ed25519 key over the deterministic serialisation of the command
    with its signature field cleared."""

    key_id = "test-key"

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()

    def sign(self, command: pb.AdaptationCommand) -> None:
        command.ClearField("signature")
        signature = self._key.sign(command.SerializeToString(deterministic=True))
        command.signature.key_id = self.key_id
        command.signature.signature = signature

    def verify(self, command: pb.AdaptationCommand) -> None:
        """Raise cryptography's InvalidSignature unless ``command`` is signed by us."""
        unsigned = pb.AdaptationCommand()
        unsigned.CopyFrom(command)
        unsigned.ClearField("signature")
        assert command.signature.key_id == self.key_id
        self._key.public_key().verify(
            command.signature.signature, unsigned.SerializeToString(deterministic=True)
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
    controller: StepController
    holder: PolicyHolder
    builder: GraphBuilder
    catalog: CachedCatalog
    signer: Ed25519TestSigner
    sink: Collect
    publisher: TelemetryPublisher
    size: synthetic.StateSize
    rng: random.Random = field(default_factory=lambda: random.Random(3))

    def packet(self, step: int = 1000) -> pb.SystemStatePacket:
        return synthetic.packet(self.size, self.builder.topology, self.rng, step=step)


def make_stack(
    *,
    policy: ServingPolicy | None = None,
    settings: StepSettings = RELAXED,
    size: synthetic.StateSize = synthetic.REFERENCE_SIZE,
    catalog: BlueprintCatalog | None = None,
    candidates: Sequence[str] | None = None,
    gate: CommandGate | None = None,
    normalizer_update: bool = False,
    prefetch: bool = True,
    generator: torch.Generator | None = None,
) -> Stack:
    host = synthetic.topology(size)
    static = StaticBlueprintCatalog(synthetic.catalogue(size))
    cached = CachedCatalog(
        catalog or static,
        deadline_ms=settings.urza_deadline_ms,
        ttl_s=settings.urza_cache_ttl_s,
        max_stale_s=settings.urza_max_stale_s,
    )
    ids = tuple(candidates) if candidates is not None else static.ids()
    if prefetch:
        assert cached.prefetch(ids, timeout_s=10.0)
    builder = GraphBuilder(host, ids, RunningNormalizer(update=normalizer_update))
    holder = holder_for(policy or ServingPolicy(SMALL))
    signer = Ed25519TestSigner()
    sink = Collect()
    publisher = TelemetryPublisher(sink, queue_size=64)
    controller = StepController(
        policy=holder,
        builder=builder,
        catalog=cached,
        signer=signer,
        settings=settings,
        telemetry=publisher,
        gate=gate,
        generator=generator,
    )
    return Stack(controller, holder, builder, cached, signer, sink, publisher, size)
