"""Actors and the V-trace learner through the cluster as through one server: the
learner's service tests, collected here again under this package's settings
(parametrised over both)."""

from __future__ import annotations

from tests.impala.test_service import (
    test_actor_segments_are_learnt_and_the_candidate_reaches_tamiyo,
    test_hostile_segments_are_dead_lettered_and_unrewarded_ones_left_alone,
)

__all__ = [
    "test_actor_segments_are_learnt_and_the_candidate_reaches_tamiyo",
    "test_hostile_segments_are_dead_lettered_and_unrewarded_ones_left_alone",
]
