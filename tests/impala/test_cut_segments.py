"""A segment cut before its episode ended (a full unroll, or a change of the run's
structure) carries the behaviour critic's value of the state after it. By default the
learner bootstraps such a segment from its own value of the last step, which is not
learnt from; with ``behaviour_bootstrap`` every decision is learnt, the last
bootstrapping from the carried value."""

from __future__ import annotations

import itertools

import torch

from tamiyo_bus.impala.batch import TopologyCache, segment_batch, trained_steps

from .helpers import actor_segments, initial_policy


def test_a_cut_segment_carries_the_value_of_the_next_segments_first_state() -> None:
    segments = actor_segments(initial_policy(), runs=2, unroll_steps=5)
    by_run: dict[str, list[int]] = {}
    for index, segment in enumerate(segments):
        by_run.setdefault(segment.training_run_id, []).append(index)
    cut = 0
    for indices in by_run.values():
        run = [segments[i] for i in indices if segments[i].steps]
        for segment, following in itertools.pairwise(run):
            assert segment.HasField("bootstrap_value")
            assert segment.bootstrap_value == following.steps[0].behaviour_value
            assert trained_steps(segment, behaviour_bootstrap=True) == len(segment.steps)
            assert trained_steps(segment, behaviour_bootstrap=False) == len(segment.steps) - 1
            cut += 1
        assert run[-1].steps[-1].done and not run[-1].HasField("bootstrap_value")
    assert cut >= 4


@torch.no_grad()
def test_the_batch_bootstraps_a_cut_segment_from_the_learners_value_or_the_carried_one() -> None:
    policy = initial_policy()
    cut = next(
        s for s in actor_segments(policy, runs=2, unroll_steps=5)
        if s.HasField("bootstrap_value") and len(s.steps) >= 2
    )  # fmt: skip
    given = segment_batch([cut], TopologyCache(), behaviour_bootstrap=True)
    inputs = given.evaluate(policy)
    assert given.transitions == len(cut.steps)
    assert float(inputs.bootstrap_value[0]) == cut.bootstrap_value
    assert float(inputs.rewards[-1, 0]) == cut.steps[-1].reward

    own = segment_batch([cut], TopologyCache(), behaviour_bootstrap=False)
    assert own.transitions == len(cut.steps) - 1
    last_value = own.evaluate(policy)
    assert float(last_value.rewards[-1, 0]) == cut.steps[-2].reward
    torch.testing.assert_close(
        last_value.bootstrap_value[0], inputs.values[-1, 0], rtol=1e-5, atol=1e-6
    )

    cut.ClearField("bootstrap_value")  # as Tamiyo's segments: the same, whatever the mode
    carried_none = segment_batch([cut], TopologyCache(), behaviour_bootstrap=True)
    torch.testing.assert_close(
        carried_none.evaluate(policy).bootstrap_value, last_value.bootstrap_value
    )
