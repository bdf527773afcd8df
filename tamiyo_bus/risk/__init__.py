"""Tamiyo's risk engine: signals, categories and gating, breakers, conservative mode.

The step path talks to ``StepGate``, which drives ``RiskGate``; see docs/risk.md.
"""

from leyline_vocab.events import BreakerName
from tamiyo_bus.risk.breakers import BreakerBankSettings, RiskBreakers
from tamiyo_bus.risk.conservative import ConservativeMode, ConservativeSettings
from tamiyo_bus.risk.engine import Category, CategoryRule, Weights
from tamiyo_bus.risk.gate import GateResult, RiskGate, RiskSettings, breaker_reason
from tamiyo_bus.risk.gating import GatingSettings, Restriction
from tamiyo_bus.risk.signals import Signal, Thresholds
from tamiyo_bus.risk.step_gate import StepGate
from tamiyo_bus.risk.tracker import SignalTracker, TrackerSettings

__all__ = [
    "BreakerBankSettings",
    "BreakerName",
    "Category",
    "CategoryRule",
    "ConservativeMode",
    "ConservativeSettings",
    "GateResult",
    "GatingSettings",
    "Restriction",
    "RiskBreakers",
    "RiskGate",
    "RiskSettings",
    "Signal",
    "SignalTracker",
    "StepGate",
    "Thresholds",
    "TrackerSettings",
    "Weights",
    "breaker_reason",
]
