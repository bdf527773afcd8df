"""A decision made ahead reaches Kasmina a step after the state it was made on: when the
seed's stage has moved meanwhile, Kasmina refuses it (counted) and nothing changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leyline_pb import leyline_pb2 as pb
from oona.events import BufferedEventSink
from oona.keys import Signer
from tamiyo_bus import TamiyoSettings, build_tamiyo
from tamiyo_bus.policy.actions import ACTION_SPACE, PolicyAction
from tamiyo_bus.policy.baselines import NoOpPolicy
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.policy.serving import Inference
from tamiyo_bus.security.commands import CommandSigner, stamp_command
from tamiyo_bus.security.policy_update import PolicyHolder, RunningPolicy
from tamiyo_bus.settings import DecisionMode, StepSettings
from tamiyo_bus.tolaria.models import host_topology
from tamiyo_bus.tolaria.trainer import Tolaria
from tamiyo_bus.urza.store import candidate_blueprints
from tests.policy.helpers import UNTRAINED_RISK_HEAD

from .helpers import assemble, seed_command, trainer

SEED = "block1.s0"
BLUEPRINT = "lowrank-4"
GERMINATE = next(
    i for i, spec in enumerate(ACTION_SPACE) if spec.seed_operation == pb.SEED_OP_GERMINATE
)


class GerminateOne(NoOpPolicy):
    """Always germinates ``SEED`` with ``BLUEPRINT`` when the masks allow it."""

    def decide(self, graph: PolicyGraph, **kwargs: Any) -> Inference:
        seed = graph.seed_ids.index(SEED)
        blueprint = graph.blueprint_ids.index(BLUEPRINT)
        if not bool(graph.masks.blueprint[seed, blueprint]):
            return super().decide(graph, **kwargs)
        return Inference(PolicyAction(GERMINATE, seed, blueprint), 0.0, 0.0, 0.0)


def state(run: Tolaria) -> pb.SystemStatePacket:
    """The run's state, with the loss of a run that has trained (none has yet)."""
    packet = run.state_packet()
    packet.training_loss = 1.0
    return packet


def test_a_decision_no_longer_legal_on_arrival_is_refused(tmp_path: Path, signer: Signer) -> None:
    parts = assemble(tmp_path, signer)
    topology = host_topology(parts.model)
    tamiyo = build_tamiyo(
        TamiyoSettings(
            StepSettings(decision_mode=DecisionMode.AHEAD, decision_every_steps=1),
            UNTRAINED_RISK_HEAD,
        ),
        topology=topology,
        blueprints=parts.store,
        candidates=candidate_blueprints(parts.store, topology),
        signer=signer,
        holder=PolicyHolder(
            RunningPolicy(GerminateOne(), "scripted", 1, "scripted", registry_digest())
        ),
        events=BufferedEventSink(),
    ).start()
    try:
        run = trainer(parts, tamiyo.controller, max_steps=10)
        assert tamiyo.evaluate_step(state(run)) is None  # decided on this state
        assert tamiyo.wait_idle(10.0)

        # Meanwhile the seed is germinated by someone else (a signed command of ours).
        other = seed_command(SEED, pb.SEED_OP_GERMINATE, blueprint_id=BLUEPRINT)
        stamp_command(other, "operator")
        CommandSigner(signer).sign(other)
        assert parts.kasmina.apply_command(other).applied
        run.step += 1

        command = tamiyo.evaluate_step(state(run))
        assert command is not None
        assert command.seed.operation == pb.SEED_OP_GERMINATE
        assert command.global_step == command.decision_step + 1
        result = parts.kasmina.apply_command(command)
        assert result.verified and not result.applied
        assert result.outcome == "wrong_stage"
        assert parts.kasmina.stats.refused["wrong_stage"] == 1
        assert [e.seed_id for e in parts.kasmina.history] == [SEED]  # only the first
    finally:
        tamiyo.close()
