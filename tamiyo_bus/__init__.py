"""Tamiyo, the strategic controller of morphogenetic training: ``build_tamiyo`` assembles
the step path (policy, Urza cache, risk gate and breakers, signing) from settings."""

from tamiyo_bus.tamiyo import (
    Baseline,
    Tamiyo,
    TamiyoSettings,
    baseline_policy,
    build_tamiyo,
    initial_policy,
)

__all__ = [
    "Baseline",
    "Tamiyo",
    "TamiyoSettings",
    "baseline_policy",
    "build_tamiyo",
    "initial_policy",
]
