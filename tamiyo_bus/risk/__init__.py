"""Tamiyo's risk engine: signals, categories and gating, breakers, conservative mode.

The step path talks to ``RiskStage`` (or ``RiskGate`` directly); see docs/risk.md.
"""

from leyline_vocab.events import BreakerName, EventKind, priority_for
from tamiyo_bus.risk.breakers import BreakerBankSettings, RiskBreakers
from tamiyo_bus.risk.conservative import ConservativeMode, ConservativeSettings
from tamiyo_bus.risk.engine import Category, CategoryRule, Weights
from tamiyo_bus.risk.gate import GateResult, RiskGate, RiskSettings, breaker_reason
from tamiyo_bus.risk.gating import GatingSettings, Restriction
from tamiyo_bus.risk.signals import Signal, Thresholds
from tamiyo_bus.risk.stage import InferenceOutcome, RiskStage
from tamiyo_bus.risk.tracker import SignalTracker, TrackerSettings

__all__ = [
    "BreakerBankSettings",
    "BreakerName",
    "Category",
    "CategoryRule",
    "ConservativeMode",
    "ConservativeSettings",
    "EventKind",
    "GateResult",
    "GatingSettings",
    "InferenceOutcome",
    "Restriction",
    "RiskBreakers",
    "RiskGate",
    "RiskSettings",
    "RiskStage",
    "Signal",
    "SignalTracker",
    "Thresholds",
    "TrackerSettings",
    "Weights",
    "breaker_reason",
    "priority_for",
]
