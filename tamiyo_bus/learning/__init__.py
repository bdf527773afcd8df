"""Tamiyo's learning side; ``guard`` puts every learning step behind the learning
breaker and conservative mode (docs/risk.md)."""

from tamiyo_bus.learning.guard import (
    LearningGuard,
    LearningGuardSettings,
    LearningOutcome,
    LearningStepResult,
)

__all__ = ["LearningGuard", "LearningGuardSettings", "LearningOutcome", "LearningStepResult"]
