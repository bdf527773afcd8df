"""Shared pieces of the security tests: a small policy module, byte-exact weight
snapshots, and commands and envelopes to tamper with."""

from __future__ import annotations

import time

import torch

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.events import BufferedEventSink
from oona.freshness import Clock
from oona.keys import UNRESTRICTED, Keyring, Signer
from oona.metrics import BusMetrics
from oona.replies import entries
from tamiyo_bus.security.policy_update import (
    PolicyHolder,
    PolicyUpdateTransaction,
    RunningPolicy,
)

ARCHITECTURE = "test-mlp/v1"
REGISTRY = "sha256:registry-a"


def small_policy(seed: int = 0) -> torch.nn.Module:
    """Float weights plus an int64 buffer (BatchNorm's step counter), so dtype checks
    see more than one dtype."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)
    ).eval()


def weight_bytes(module: torch.nn.Module) -> dict[str, bytes]:
    """Every tensor of the state dict as raw bytes: equal means bit-identical."""
    return {name: t.detach().cpu().numpy().tobytes() for name, t in module.state_dict().items()}


def make_holder(version: int = 1) -> PolicyHolder:
    return PolicyHolder(RunningPolicy(small_policy(0), "policy-a", version, ARCHITECTURE, REGISTRY))


def make_transaction(
    holder: PolicyHolder, keyring: Keyring, clock_ns: Clock = time.time_ns
) -> tuple[PolicyUpdateTransaction, BusMetrics, BufferedEventSink]:
    metrics = BusMetrics()
    events = BufferedEventSink()
    transaction = PolicyUpdateTransaction(
        holder, keyring, metrics=metrics, events=events, clock_ns=clock_ns
    )
    return transaction, metrics, events


def seed_command(global_step: int = 1) -> pb.AdaptationCommand:
    """A command with every kind of field set: scalars, a oneof payload and maps."""
    command = pb.AdaptationCommand(
        version=1,
        command_type=pb.COMMAND_TYPE_SEED,
        target_seed_id="seed-3",
        reason="loss_plateau",
        policy_version=7,
        global_step=global_step,
        training_run_id="run-1",
    )
    command.seed.operation = pb.SEED_OP_GERMINATE
    command.seed.blueprint_id = "bp-conv-small"
    command.seed.blend_method = pb.BLEND_METHOD_COSINE
    command.seed.alpha_steps = 200
    command.seed.parameters["lr_scale"] = 0.5
    command.annotations["risk"] = "green"
    return command


def signer_pair() -> tuple[Signer, Keyring]:
    signer = Signer.generate()
    return signer, Keyring.of(signer.public_key(), role=UNRESTRICTED)


async def dead_letters(bus: Bus, stream: str) -> list[dict[bytes, bytes]]:
    """The records of a stream's dead-letter stream, oldest first."""
    return [fields for _, fields in entries(await bus.redis.xrange(bus.dead_letter_key(stream)))]
