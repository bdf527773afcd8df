"""The step path's experience: every policy decision reaches the learner's side with
the exact inputs it was made on (to float16), its choice, behaviour log-probability and
value, version and steps; decisions the policy did not make are no experience; a run's
end closes its segment with where the run stood."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import BreakerName
from tamiyo_bus.decision import InferenceOutcome
from tamiyo_bus.experience.steps import graph_group, progress_of, topology_of
from tamiyo_bus.learning.graph_batch import GraphTransitions
from tamiyo_bus.learning.graph_evaluation import GraphPolicyEvaluator
from tamiyo_bus.policy.reference import ReferencePolicy
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.settings import DecisionMode, StepSettings
from tests.policy.helpers import SMALL, Stack, make_stack

SYNCHRONOUS = StepSettings(
    decision_mode=DecisionMode.SYNCHRONOUS, decision_every_steps=1, sample_actions=True
)
STEPS = (10, 20, 30, 40, 50)


def run(stack: Stack, steps: tuple[int, ...] = STEPS) -> list[pb.AdaptationCommand]:
    commands = []
    for step in steps:
        command = stack.tamiyo.evaluate_step(stack.packet(step))
        assert command is not None
        commands.append(command)
    return commands


def test_each_decision_arrives_with_its_command_steps_version_and_outcome() -> None:
    segments: list[pb.Trajectory] = []
    stack = make_stack(settings=SYNCHRONOUS, experience=segments.append, seed=4)
    commands = run(stack)
    final = stack.packet(60)
    final.validation_accuracy = 0.75
    stack.tamiyo.end_run(final)
    stack.tamiyo.close()

    assert len(segments) == 1  # five decisions of one run and one structure
    segment = segments[0]
    assert segment.run_ended
    assert segment.training_run_id == final.training_run_id
    assert segment.trajectory_id == f"{final.training_run_id}/10"
    assert progress_of(segment.final_progress).accuracy == pytest.approx(0.75)
    assert [s.command_id for s in segment.steps] == [c.command_id for c in commands]
    assert [s.decision_step for s in segment.steps] == list(STEPS)
    assert [s.applied_step for s in segment.steps] == list(STEPS)
    for step, command in zip(segment.steps, commands, strict=True):
        assert step.policy_version == 1
        assert step.acted == (command.command_type != pb.COMMAND_TYPE_NO_OP)
        assert step.behaviour_log_prob == pytest.approx(
            float(command.annotations["policy_log_prob"]), rel=1e-4, abs=1e-5
        )
        assert step.progress.training_loss == pytest.approx(1.0)


def test_the_learner_reevaluates_a_step_to_the_behaviour_log_prob_and_value() -> None:
    """What the learner decodes is what the policy decided on: the same weights give
    back the behaviour log-probability and value (float16 inputs: small tolerance)."""
    segments: list[pb.Trajectory] = []
    torch.manual_seed(7)
    policy = ServingPolicy(SMALL)
    stack = make_stack(policy=policy, settings=SYNCHRONOUS, experience=segments.append, seed=5)
    run(stack)
    stack.tamiyo.close()
    (segment,) = segments
    topology = topology_of(segment.topology)
    group = graph_group(topology, segment.steps)

    reference = ReferencePolicy(SMALL)
    reference.load_state_dict(policy.state_dict())
    reference.eval()
    inputs = GraphTransitions.from_groups([group])
    with torch.no_grad():
        evaluation = GraphPolicyEvaluator(reference).evaluate(
            inputs, torch.arange(len(segment.steps))
        )
    behaviour = np.array([s.behaviour_log_prob for s in segment.steps])
    values = np.array([s.behaviour_value for s in segment.steps])
    np.testing.assert_allclose(evaluation.log_prob.numpy(), behaviour, atol=2e-2)
    np.testing.assert_allclose(evaluation.value.numpy(), values, atol=2e-2)


def test_a_step_the_policy_did_not_decide_is_no_experience() -> None:
    segments: list[pb.Trajectory] = []
    stack = make_stack(settings=SYNCHRONOUS, experience=segments.append)
    run(stack, (10, 20))
    breaker = stack.tamiyo.risk.breakers[BreakerName.INFERENCE]
    for _ in range(breaker.settings.failure_threshold):
        breaker.record_failure()
    refused = stack.tamiyo.evaluate_step(stack.packet(30))
    assert refused is not None and refused.reason == InferenceOutcome.REFUSED
    stack.tamiyo.end_run(stack.packet(40))
    stack.tamiyo.close()
    (segment,) = segments
    assert [s.decision_step for s in segment.steps] == [10, 20]
