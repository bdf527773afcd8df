"""A policy that never answers must not slow training steps past the step deadline."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from leyline_pb import leyline_pb2 as pb
from oona.events import BufferedEventSink
from oona.keys import UNRESTRICTED, Keyring, Signer
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.reference import PolicyConfig, architecture_id
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.policy.serving import Inference, ServingPolicy
from tamiyo_bus.security.policy_update import PolicyHolder, RunningPolicy
from tamiyo_bus.settings import DecisionMode, StepSettings
from tamiyo_bus.urza.store import UrzaSettings, UrzaStore
from weatherlight.demo.assembly import RunSpec, assemble
from weatherlight.demo.recorder import RunRecorder

SMALL = PolicyConfig(hidden_dim=32, gat_heads=2, gat_head_dim=8, head_hidden_dim=32)
DEADLINE_MS = 5.0
EVERY_STEP_INLINE = StepSettings(
    decision_mode=DecisionMode.INLINE, decision_every_steps=1, step_deadline_ms=DEADLINE_MS
)
SLACK_MS = 50.0  # thread wake-up on a loaded 2-core machine, not work done for Tamiyo
STEPS = 40


class WedgedPolicy(ServingPolicy):
    """Answers while ``free`` is set (the warm-up); afterwards hangs for good."""

    def __init__(self) -> None:
        super().__init__(SMALL)
        self.free = threading.Event()
        self.free.set()
        self.hung = threading.Event()

    def decide(self, graph: PolicyGraph, **kwargs: Any) -> Inference:
        if not self.free.is_set():
            self.hung.set()
            threading.Event().wait()  # never returns: a wedged policy
        return super().decide(graph, **kwargs)


def test_a_wedged_policy_costs_each_step_at_most_the_deadline(
    tmp_path: Path, signer: Signer
) -> None:
    policy = WedgedPolicy()
    holder = PolicyHolder(
        RunningPolicy(policy, "wedged", 1, architecture_id(policy), registry_digest())
    )
    recorder = RunRecorder()
    run = assemble(
        RunSpec(step=EVERY_STEP_INLINE),
        run_id="wedged-run",
        signer=signer,
        keyring=Keyring.of(signer.public_key(), role=UNRESTRICTED),
        store=UrzaStore.open_seeded(UrzaSettings(db_path=tmp_path / "urza.sqlite")),
        observers=[recorder],
        holder=holder,
        events=BufferedEventSink(),
    )
    policy.free.clear()
    data = run.data
    for start in range(0, STEPS * 32, 32):
        run.trainer.train_step(data.train_x[start : start + 32], data.train_y[start : start + 32])

    assert policy.hung.is_set()
    assert len(recorder.steps) == STEPS
    for record in recorder.steps:
        assert record.command is not None and record.result is not None
        assert record.command.command_type == pb.COMMAND_TYPE_NO_OP
        assert record.command.reason in {"timeout_inference", "inference_busy", "breaker.inference"}
        assert record.result.applied and not record.result.verified  # a NO_OP: unsigned
        assert record.decision_ms < DEADLINE_MS + SLACK_MS
        assert record.tamiyo_ms < DEADLINE_MS + SLACK_MS
    assert run.kasmina.stats.finalized == STEPS
    assert not run.kasmina.history  # nothing moved
    assert torch.isfinite(torch.tensor([r.loss for r in recorder.steps])).all()
