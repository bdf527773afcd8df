"""Deciding ahead: the decision for a step was made on an earlier state, reviewed against
this one; stale decisions are dropped, the newest state replaces a waiting one, a slow
or wedged policy is seen by the breaker, and the trainer never waits."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.decision import InferenceOutcome
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.serving import Inference, ServingPolicy
from tamiyo_bus.settings import DecisionMode, StepSettings
from tests.policy.helpers import SMALL, Stack, make_stack

AHEAD = StepSettings(decision_mode=DecisionMode.AHEAD, decision_every_steps=1)
# Generous for a machine the suite shares: a wedged policy is never released, so nothing
# in these tests waits for it, and the step's own time is measured against this.
STEP_BOUND_S = 0.25


class GatedPolicy(ServingPolicy):
    """Decides only when let through: ``hold`` it and its decisions wait (a slow
    policy); ``release`` lets the waiting one and all later ones through."""

    def __init__(self) -> None:
        super().__init__(SMALL)
        self.open = threading.Event()
        self.open.set()
        self.steps: list[int] = []
        self.entered = threading.Semaphore(0)

    def hold(self) -> None:
        self.open.clear()

    def release(self) -> None:
        self.open.set()

    def decide(self, graph: PolicyGraph, **kwargs: Any) -> Inference:
        self.entered.release()
        self.open.wait()
        return super().decide(graph, **kwargs)


def decided_step(command: pb.AdaptationCommand) -> int:
    return command.decision_step


def settle(stack: Stack) -> None:
    assert stack.controller.wait_idle(10.0)


def test_a_step_returns_at_once_with_the_decision_made_on_the_previous_state() -> None:
    stack = make_stack(settings=AHEAD)
    assert stack.controller.evaluate_step(stack.packet(10)) is None  # handed to the worker
    settle(stack)
    assert stack.controller.wants_state(11)  # a decision waits to be handed over
    command = stack.controller.evaluate_step(stack.packet(11))
    assert command is not None
    assert command.reason == InferenceOutcome.DECIDED
    assert (command.decision_step, command.global_step) == (10, 11)
    stack.verify(command)
    settle(stack)
    following = stack.controller.evaluate_step(stack.packet(12))
    assert following is not None and following.decision_step == 11


def test_a_decision_older_than_the_limit_is_dropped_and_counted() -> None:
    stack = make_stack(settings=dataclasses.replace(AHEAD, max_decision_age_steps=2))
    stack.controller.evaluate_step(stack.packet(10))
    settle(stack)
    command = stack.controller.evaluate_step(stack.packet(13))  # decided on 10: 3 steps old
    assert command is not None
    assert command.command_type == pb.COMMAND_TYPE_NO_OP
    assert command.reason == InferenceOutcome.STALE
    assert not command.HasField("signature")  # a NO_OP is neither signed nor verified
    assert stack.controller.stats.stale == 1 and stack.controller.stats.decided == 0


def test_the_newest_state_replaces_a_waiting_one() -> None:
    policy = GatedPolicy()
    stack = make_stack(policy=policy, settings=dataclasses.replace(AHEAD, max_decision_age_steps=5))
    policy.hold()
    stack.controller.evaluate_step(stack.packet(10))  # runs, held
    assert policy.entered.acquire(timeout=10.0)
    stack.controller.evaluate_step(stack.packet(11))  # waits
    stack.controller.evaluate_step(stack.packet(12))  # replaces 11: latest wins
    assert stack.controller.worker.stats.superseded == 1
    policy.release()
    settle(stack)
    first = stack.controller.evaluate_step(stack.packet(13))  # 12's decision, the newest
    assert first is not None and first.decision_step == 12
    assert stack.controller.worker.stats.superseded == 2  # 10's result was never taken


def test_the_trainer_never_waits_and_a_wedged_policy_opens_the_breaker() -> None:
    policy = GatedPolicy()
    policy.hold()  # never released: a wedged policy
    stack = make_stack(policy=policy, settings=AHEAD)
    outcomes = []
    for step in range(10):
        started = time.perf_counter()
        command = stack.controller.evaluate_step(stack.packet(step))
        assert time.perf_counter() - started < STEP_BOUND_S
        if step == 0:
            assert policy.entered.acquire(timeout=10.0)  # the worker is stuck on step 0
        outcomes.append(None if command is None else command.reason)
    threshold = stack.tamiyo.risk.settings.breakers.inference.failure_threshold
    age = AHEAD.max_decision_age_steps
    # Nothing to hand over until step 0's decision is too old; then each step finds the
    # worker late, until the breaker opens and keeps the policy from the packets.
    assert outcomes[: age + 1] == [None] * (age + 1)
    late = age + 1 + threshold
    assert outcomes[age + 1 : late] == [InferenceOutcome.STALE] * threshold
    assert outcomes[late:] == [InferenceOutcome.REFUSED] * (10 - late)
    assert stack.tamiyo.risk.conservative.active  # the breaker's opening entered the mode
