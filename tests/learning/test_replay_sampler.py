"""Prioritised sampling: the sum-tree, frequencies that follow the priorities, the
rare-event floor, importance weights and the beta schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tamiyo_bus.learning.replay import (
    PrioritizedSampler,
    ReplaySamplerSettings,
    beta_at,
    importance_weights,
)
from tamiyo_bus.learning.replay.sumtree import SumTree


def test_the_sum_tree_finds_the_leaf_holding_each_mass() -> None:
    tree = SumTree(5)
    tree.set(np.array([0, 1, 2, 3, 4, 3]), np.array([1.0, 0.0, 3.0, 9.0, 2.0, 2.0]))
    assert tree.total == 8.0  # the later duplicate (leaf 3 = 2.0) wins
    masses = np.array([0.0, 0.99, 1.0, 3.99, 4.0, 5.99, 6.0, 7.99, 8.0])
    assert tree.find(masses).tolist() == [0, 0, 2, 2, 3, 3, 4, 4, 4]
    tree.set(np.array([2]), np.array([0.0]))
    assert 2 not in tree.find(np.linspace(0, tree.total, 50)).tolist()


def filled(
    capacity: int, settings: ReplaySamplerSettings, rare: np.ndarray | None = None
) -> PrioritizedSampler:
    sampler = PrioritizedSampler(capacity, settings)
    indices = np.arange(capacity)
    sampler.add(indices, np.zeros(capacity, bool) if rare is None else rare)
    return sampler


def test_new_items_enter_at_the_largest_priority_and_updates_use_delta_plus_eps() -> None:
    s = ReplaySamplerSettings()
    sampler = filled(4, s)
    sampler.update(np.array([0, 1]), np.array([-3.0, 0.5]))
    assert sampler.all.leaves(np.array([0])) == pytest.approx((3.0 + s.priority_eps) ** 0.6)
    sampler.add(np.array([2]), np.array([False]))
    assert sampler.all.leaves(np.array([2])) == pytest.approx(sampler.all.leaves(np.array([0])))


def test_sampling_frequencies_follow_the_priorities() -> None:
    capacity, batch, batches = 40, 32, 1_500
    rng = np.random.default_rng(0)
    sampler = filled(capacity, ReplaySamplerSettings(rare_floor_fraction=0.0))
    td = rng.exponential(1.0, capacity)
    sampler.update(np.arange(capacity), td)
    counts = np.zeros(capacity)
    for _ in range(batches):
        np.add.at(counts, sampler.sample(batch, rng).indices, 1)
    expected = (np.abs(td) + 1e-6) ** 0.6
    expected = expected / expected.sum() * counts.sum()
    fits = stats.chisquare(counts, expected)
    assert fits.pvalue > 1e-3
    uniform = stats.chisquare(counts, np.full(capacity, counts.sum() / capacity))
    assert uniform.pvalue < 1e-6  # the test can tell priorities from uniform


def test_rare_events_keep_their_floor_share_of_every_batch() -> None:
    capacity, batch = 1_000, 64
    rare = np.zeros(capacity, bool)
    rare[[5, 500]] = True
    sampler = filled(capacity, ReplaySamplerSettings(rare_floor_fraction=0.1), rare)
    sampler.update(np.arange(capacity), np.where(rare, 0.01, 5.0))  # rare and unimportant
    rng = np.random.default_rng(1)
    floor = math.ceil(0.1 * batch)
    for _ in range(50):
        sample = sampler.sample(batch, rng)
        assert sample.rare_drawn == floor
        assert rare[sample.indices].sum() >= floor
    without = filled(capacity, ReplaySamplerSettings(rare_floor_fraction=0.1))
    assert without.sample(batch, rng).rare_drawn == 0


def test_importance_weights_are_as_specified() -> None:
    probabilities = np.array([0.5, 0.25, 0.25])
    # N P = [1.5, .75, .75]; beta 1: [2/3, 4/3, 4/3] / (4/3)
    np.testing.assert_allclose(importance_weights(probabilities, 3, 1.0, 10.0), [0.5, 1.0, 1.0])
    # capped at 1.2 before normalising: [2/3, 1.2, 1.2] / 1.2
    np.testing.assert_allclose(
        importance_weights(probabilities, 3, 1.0, 1.2), [2 / 3 / 1.2, 1.0, 1.0], rtol=1e-6
    )
    np.testing.assert_allclose(
        importance_weights(probabilities, 3, 0.4, 10.0),
        np.array([1.5, 0.75, 0.75]) ** -0.4 / 0.75**-0.4,
        rtol=1e-6,
    )


def test_sample_weights_use_the_mixture_probability_that_drew_them() -> None:
    capacity = 200
    rare = np.arange(capacity) % 50 == 0
    s = ReplaySamplerSettings(rare_floor_fraction=0.25)
    sampler = filled(capacity, s, rare)
    td = np.random.default_rng(2).exponential(1.0, capacity)
    sampler.update(np.arange(capacity), td)
    sample = sampler.sample(16, np.random.default_rng(3))
    p = (td + s.priority_eps) ** 0.6
    share = sample.rare_drawn / 16
    mixture = (1 - share) * p / p.sum() + share * np.where(rare, p, 0) / p[rare].sum()
    assert mixture.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(sample.probabilities, mixture[sample.indices], rtol=1e-9)
    np.testing.assert_allclose(
        sample.weights,
        importance_weights(mixture[sample.indices], capacity, s.beta_start, 10.0),
        rtol=1e-6,
    )


def test_beta_is_annealed_from_its_start_to_one() -> None:
    s = ReplaySamplerSettings(beta_anneal_batches=100)
    assert beta_at(0, s) == 0.4
    assert beta_at(50, s) == pytest.approx(0.7)
    assert beta_at(100, s) == 1.0 and beta_at(10_000, s) == 1.0
    sampler = filled(10, s)
    rng = np.random.default_rng(0)
    betas = [sampler.sample(4, rng).beta for _ in range(3)]
    assert betas == pytest.approx([0.4, 0.406, 0.412])


def test_removed_slots_are_never_drawn_and_state_round_trips() -> None:
    sampler = filled(64, ReplaySamplerSettings())
    sampler.remove(np.arange(0, 64, 2))
    assert sampler.population == 32
    drawn = sampler.sample(256, np.random.default_rng(0)).indices
    assert (drawn % 2 == 1).all()
    copy = PrioritizedSampler(64, ReplaySamplerSettings())
    copy.load_state_dict(sampler.state_dict())
    assert copy.all.total == pytest.approx(sampler.all.total)
    again = copy.sample(256, np.random.default_rng(0))
    assert (again.indices == sampler.sample(256, np.random.default_rng(0)).indices).all()
