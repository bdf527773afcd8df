"""V-trace: off-policy targets for an actor-learner split (pure numpy, no IO).

Actors act with the policy they last received (the behaviour policy mu); by the time
the learner trains on their trajectories it has moved on (the target policy pi). V-trace
corrects for the difference with truncated importance weights:

    rho_t = min(rho_bar, pi(a_t | x_t) / mu(a_t | x_t))
    c_t   = lambda * min(c_bar, pi(a_t | x_t) / mu(a_t | x_t))
    delta_t = rho_t * (r_t + gamma_t * V(x_{t+1}) - V(x_t))
    v_s - V(x_s) = delta_s + gamma_s * c_s * (v_{s+1} - V(x_{s+1}))     (backwards)

``v_s`` is the value target; the policy gradient uses the advantage
``rho_s * (r_s + gamma_s * v_{s+1} - V(x_s))``. ``gamma_t`` is the discount times
``1 - terminated_t``: nothing is carried across the end of an episode. With
``rho_bar = c_bar = 1`` and the actor on-policy (pi = mu), every weight is 1 and, with
``lambda = 1``, the targets are the n-step returns bootstrapped from the segment's last
value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class VTraceSettings:
    gamma: float = 0.99  # discount per step
    rho_bar: float = 1.0  # truncation of the importance weight in the TD error
    c_bar: float = 1.0  # truncation of the trace-cutting weights
    trace_lambda: float = 1.0  # the traces' own decay (1: the original V-trace)

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.trace_lambda <= 1.0:
            raise ValueError("gamma and trace_lambda must lie in [0, 1]")
        if self.rho_bar <= 0 or self.c_bar <= 0:
            raise ValueError("rho_bar and c_bar must be positive")


@dataclass(frozen=True, slots=True)
class VTraceTargets:
    values: FloatArray  # v_s: the value targets, [T] (or [T, B])
    advantages: FloatArray  # rho_s (r_s + gamma_s v_{s+1} - V(x_s)): the policy-gradient weight
    rhos: FloatArray  # the truncated importance weights actually used


def vtrace(
    rewards: npt.ArrayLike,
    values: npt.ArrayLike,
    bootstrap_value: npt.ArrayLike,
    target_log_probs: npt.ArrayLike,
    behaviour_log_probs: npt.ArrayLike,
    terminated: npt.ArrayLike,
    settings: VTraceSettings | None = None,
) -> VTraceTargets:
    """V-trace targets for one segment of ``T`` steps (time first; any batch after it).

    ``values`` are the learner's V(x_t); ``bootstrap_value`` is V(x_T), the state after
    the segment (ignored where the last step terminated); the log-probabilities are of
    the actions taken, under the learner's policy and the actor's.
    """
    s = settings or VTraceSettings()
    r = np.asarray(rewards, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if r.shape != v.shape or r.ndim == 0:
        raise ValueError(f"rewards {r.shape} and values {v.shape} must share one shape")
    ratios = np.exp(
        np.asarray(target_log_probs, np.float64) - np.asarray(behaviour_log_probs, np.float64)
    )
    rhos = np.minimum(s.rho_bar, ratios)
    cs = s.trace_lambda * np.minimum(s.c_bar, ratios)
    discounts = s.gamma * (1.0 - np.asarray(terminated, dtype=np.float64))
    next_values = np.concatenate((v[1:], np.asarray(bootstrap_value, np.float64)[None, ...]))
    deltas = rhos * (r + discounts * next_values - v)

    corrections = np.zeros_like(v)
    carry = np.zeros_like(v[0])
    for t in range(len(r) - 1, -1, -1):
        carry = deltas[t] + discounts[t] * cs[t] * carry
        corrections[t] = carry
    targets = v + corrections
    next_targets = np.concatenate((targets[1:], np.asarray(bootstrap_value, np.float64)[None, ...]))
    advantages = rhos * (r + discounts * next_targets - v)
    return VTraceTargets(
        targets.astype(np.float32), advantages.astype(np.float32), rhos.astype(np.float32)
    )
