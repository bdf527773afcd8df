"""A fast stand-in for a training run that speaks the real contracts: SystemStatePackets
in, AdaptationCommands applied by Kasmina's own lifecycle rules, FieldReports out
(docs/learning.md, "The simulator")."""

from tamiyo_bus.sim.env import SimStep, VectorSim
from tamiyo_bus.sim.settings import (
    DynamicsSettings,
    HostSettings,
    SimSettings,
    WatchdogSettings,
)

__all__ = [
    "DynamicsSettings",
    "HostSettings",
    "SimSettings",
    "SimStep",
    "VectorSim",
    "WatchdogSettings",
]
