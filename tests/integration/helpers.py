"""A scripted stand-in for Tamiyo (signed commands chosen by a rule) and a small
Tolaria/Kasmina/Urza assembly for the integration tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from leyline_pb import leyline_pb2 as pb
from oona.keys import UNRESTRICTED, Keyring, Signer
from tamiyo_bus.kasmina.executor import Kasmina
from tamiyo_bus.kasmina.settings import KasminaSettings
from tamiyo_bus.security.commands import CommandSigner, CommandVerifier, stamp_command
from tamiyo_bus.tolaria.data import Dataset, load
from tamiyo_bus.tolaria.lr import LRController, LRSettings
from tamiyo_bus.tolaria.models import HostModel, build_host
from tamiyo_bus.tolaria.trainer import Tolaria, TolariaSettings
from tamiyo_bus.urza.store import UrzaSettings, UrzaStore
from weatherlight.demo.recorder import RunRecorder

RUN_ID = "test-run"
Rule = Callable[[pb.SystemStatePacket], pb.AdaptationCommand]


def seed_command(seed_id: str, operation: int, **fields: object) -> pb.AdaptationCommand:
    command = pb.AdaptationCommand(
        version=1, command_type=pb.COMMAND_TYPE_SEED, target_seed_id=seed_id,
        training_run_id=RUN_ID,
    )  # fmt: skip
    command.seed.operation = operation  # type: ignore[assignment]
    for name, value in fields.items():
        if isinstance(value, dict):
            getattr(command.seed, name).update(value)
        else:
            setattr(command.seed, name, value)
    return command


def no_op() -> pb.AdaptationCommand:
    return pb.AdaptationCommand(
        version=1, command_type=pb.COMMAND_TYPE_NO_OP, training_run_id=RUN_ID
    )


class ScriptedController:
    """Decides by ``rule`` every ``every`` steps, then stamps and signs like
    evaluate_step; keeps the packets it was shown."""

    def __init__(self, signer: Signer, rule: Rule, every: int = 1) -> None:
        self.signer = CommandSigner(signer)
        self.rule = rule
        self.every = every
        self.packets: list[pb.SystemStatePacket] = []

    def wants_state(self, step: int) -> bool:
        return step % self.every == 0

    def evaluate_step(self, packet: pb.SystemStatePacket) -> pb.AdaptationCommand:
        self.packets.append(packet)
        command = self.rule(packet)
        command.global_step = packet.global_step
        stamp_command(command, "scripted-tamiyo")
        self.signer.sign(command)
        return command


def lifecycle_rule(seed_id: str, blueprint_id: str, alpha_steps: int = 10) -> Rule:
    """Walk one seed through its whole lifecycle as soon as each gate allows."""

    def rule(packet: pb.SystemStatePacket) -> pb.AdaptationCommand:
        state = next(s for s in packet.seed_states if s.seed_id == seed_id)
        stage = state.stage
        if stage == pb.SEED_STAGE_DORMANT:
            return seed_command(seed_id, pb.SEED_OP_GERMINATE, blueprint_id=blueprint_id)
        if stage == pb.SEED_STAGE_GERMINATED:
            return seed_command(seed_id, pb.SEED_OP_START_TRAINING)
        if stage == pb.SEED_STAGE_TRAINING and state.age >= 25:
            return seed_command(
                seed_id, pb.SEED_OP_START_BLENDING,
                blend_method=pb.BLEND_METHOD_COSINE, alpha_steps=alpha_steps,
            )  # fmt: skip
        if stage == pb.SEED_STAGE_BLENDING and state.alpha >= 1.0:
            return seed_command(seed_id, pb.SEED_OP_ADVANCE)
        if stage in (pb.SEED_STAGE_SHADOWING, pb.SEED_STAGE_PROBATIONARY):
            op = pb.SEED_OP_ADVANCE if stage == pb.SEED_STAGE_SHADOWING else pb.SEED_OP_FOSSILIZE
            return seed_command(seed_id, op)
        return no_op()

    return rule


@dataclass
class Assembly:
    model: HostModel
    data: Dataset
    lr: LRController
    kasmina: Kasmina
    verifier: CommandVerifier
    store: UrzaStore


def assemble(
    tmp_path: Path,
    signer: Signer,
    *,
    dataset: str = "digits",
    model: str = "mlp",
    width: int = 32,
    depth: int = 2,
    kasmina_settings: KasminaSettings | None = None,
) -> Assembly:
    torch.manual_seed(0)
    data = load(dataset)
    host = build_host(
        model, features=data.features, classes=data.classes, image_shape=data.image_shape,
        width=width, depth=depth,
    )  # fmt: skip
    lr = LRController(LRSettings(base_lr=3e-3, warmup_steps=10, total_steps=400))
    store = UrzaStore.open_seeded(UrzaSettings(db_path=tmp_path / "urza.sqlite"))
    verifier = CommandVerifier(Keyring.of(signer.public_key(), role=UNRESTRICTED))
    kasmina = Kasmina(
        host.sites, blueprints=store, verifier=verifier, learning_rates=lr,
        host_parameters=sum(p.numel() for p in host.parameters()), training_run_id=RUN_ID,
        device=torch.device("cpu"), settings=kasmina_settings,
    )  # fmt: skip
    return Assembly(host, data, lr, kasmina, verifier, store)


def trainer(
    parts: Assembly,
    controller: ScriptedController | None,
    *,
    max_steps: int,
    observers: tuple[RunRecorder, ...] = (),
) -> Tolaria:
    settings = TolariaSettings(epochs=100, batch_size=32, max_steps=max_steps)
    return Tolaria(
        parts.model, parts.data, settings, lr=parts.lr, training_run_id=RUN_ID,
        kasmina=parts.kasmina if controller else None, controller=controller,
        observers=observers,
    )  # fmt: skip
