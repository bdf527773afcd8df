"""The validation gate a candidate policy passes before it is published (pure).

Three checks against the running policy (the one last published, or the start
weights), each on figures measured elsewhere (``simic.evaluation``):

- the value error on held-out decisions (a fixed ~10 % of command ids, never trained
  on) must not grow beyond a tolerance: a critic that got worse on data it did not
  see is overfitting or broken;
- the mean KL(running || candidate) on the held-out states must stay under a bound:
  Tamiyo moves by one bounded step at a time, whatever the learner did;
- (optional) the candidate's mean return over seeded simulated runs must not be worse
  than the running policy's on the same runs by more than a tolerance.

Which decisions are held out is a hash of the command id, so a redelivered or
restarted stream holds out the same ones.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from enum import StrEnum

from tamiyo_bus.sim.settings import SimSettings

_HASH_BUCKETS = 10_000


def is_held_out(command_id: str, fraction: float) -> bool:
    """Whether ``command_id``'s decision is kept for validation (stable across runs)."""
    digest = hashlib.sha256(command_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % _HASH_BUCKETS < fraction * _HASH_BUCKETS


@dataclass(frozen=True)
class ValidationGateSettings:
    """Bounds of the validation gate (value error relative, KL in nats, returns in the
    reward's units)."""

    min_held_out_decisions: int = 32  # fewer: no candidate yet (deferred)
    value_error_tolerance: float = 0.2  # candidate MSE <= running MSE x (1 + this) + slack
    value_error_slack: float = 0.01
    max_kl: float = 0.1
    sim_evaluation: bool = True
    sim_runs: int = 4  # simulated runs, one episode each, per policy
    sim_seed: int = 1_000
    sim_return_tolerance: float = 0.1  # candidate mean return >= running's - this
    sim: SimSettings = field(default_factory=SimSettings)

    def __post_init__(self) -> None:
        if self.min_held_out_decisions < 1 or self.sim_runs < 1:
            raise ValueError("min_held_out_decisions and sim_runs must be >= 1")
        bounds = (self.value_error_tolerance, self.value_error_slack, self.sim_return_tolerance)
        if min(bounds) < 0 or not self.max_kl > 0:
            raise ValueError("tolerances must be >= 0 and max_kl > 0")


class Rejection(StrEnum):
    VALUE_ERROR = "value_error"
    KL = "kl"
    SIM_RETURN = "sim_return"
    NOT_FINITE = "not_finite"


@dataclass(frozen=True, slots=True)
class HeldOutFigures:
    decisions: int
    running_value_error: float  # mean squared error against the held-out returns
    candidate_value_error: float
    kl: float  # mean KL(running || candidate) over the held-out states


@dataclass(frozen=True, slots=True)
class SimFigures:
    running_return: float  # mean episode return over the seeded runs
    candidate_return: float


@dataclass(frozen=True, slots=True)
class GateVerdict:
    rejections: tuple[Rejection, ...]

    @property
    def passed(self) -> bool:
        return not self.rejections


def judge(
    held_out: HeldOutFigures, sim: SimFigures | None, settings: ValidationGateSettings
) -> GateVerdict:
    """Every check the figures fail (none: the candidate may be published)."""
    figures = [held_out.running_value_error, held_out.candidate_value_error, held_out.kl]
    if sim is not None:
        figures += [sim.running_return, sim.candidate_return]
    if not all(math.isfinite(f) for f in figures):
        return GateVerdict((Rejection.NOT_FINITE,))
    rejections = []
    allowed = (
        held_out.running_value_error * (1.0 + settings.value_error_tolerance)
        + settings.value_error_slack
    )
    if held_out.candidate_value_error > allowed:
        rejections.append(Rejection.VALUE_ERROR)
    if held_out.kl > settings.max_kl:
        rejections.append(Rejection.KL)
    if (
        sim is not None
        and sim.candidate_return < sim.running_return - settings.sim_return_tolerance
    ):
        rejections.append(Rejection.SIM_RETURN)
    return GateVerdict(tuple(rejections))
