"""Generalised advantage estimation over one rollout (pure numpy, no IO).

An episode can end two ways and they must not be confused: a *terminal* state has no
future, so nothing is bootstrapped past it; a *time-limit cut* (truncation) stops the
rollout in a state that still has a future, so its value is bootstrapped from the
critic, and only the advantage trace is cut there (the next step belongs to another
episode). Treating a cut as terminal teaches the critic that running out of time is a
catastrophe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class GAESettings:
    gamma: float = 0.99  # discount per step
    gae_lambda: float = 0.95  # bias/variance trade-off of the advantage trace

    def __post_init__(self) -> None:
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.gae_lambda <= 1.0):
            raise ValueError("gamma and gae_lambda must lie in [0, 1]")


@dataclass(frozen=True, slots=True)
class Advantages:
    advantages: FloatArray  # same shape as the rewards
    returns: FloatArray  # advantages + values: the critic's regression target


def next_state_values(
    values: npt.ArrayLike,
    last_value: npt.ArrayLike,
    truncated: npt.ArrayLike,
    final_values: npt.ArrayLike | None = None,
) -> FloatArray:
    """V(s_{t+1}) for a contiguous rollout: ``values`` shifted by one step, the last
    step bootstrapped from ``last_value``.

    Where an environment resets itself after a cut, ``values[t + 1]`` belongs to the
    next episode's first state, so every truncated step takes ``final_values[t]`` (the
    critic's value of the state the cut left behind) instead; without it a truncated
    step in the middle of the rollout is an error, not a silent zero.
    """
    current = np.asarray(values, dtype=np.float32)
    cut = np.asarray(truncated, dtype=np.bool_)
    shifted = np.concatenate((current[1:], np.asarray(last_value, np.float32)[None, ...]))
    if final_values is not None:
        return np.where(cut, np.asarray(final_values, np.float32), shifted)
    if cut[:-1].any():
        raise ValueError("truncated steps inside the rollout need final_values")
    return shifted


def compute_gae(
    rewards: npt.ArrayLike,
    values: npt.ArrayLike,
    next_values: npt.ArrayLike,
    terminated: npt.ArrayLike,
    truncated: npt.ArrayLike,
    settings: GAESettings | None = None,
) -> Advantages:
    """GAE backwards over time (axis 0; any trailing axes are parallel environments).

    ``next_values[t]`` is V(s_{t+1}) of the state step t actually reached (see
    :func:`next_state_values`); ``terminated[t]`` removes its bootstrap;
    ``terminated[t] | truncated[t]`` cuts the trace between t and t + 1.
    """
    s = settings or GAESettings()
    ended = np.asarray(terminated, dtype=np.bool_)
    episode_over = ended | np.asarray(truncated, dtype=np.bool_)
    critic = np.asarray(values, dtype=np.float64)
    bootstrap = np.asarray(next_values, dtype=np.float64) * ~ended
    deltas = np.asarray(rewards, dtype=np.float64) + s.gamma * bootstrap - critic
    carries = s.gamma * s.gae_lambda * ~episode_over
    advantages = np.zeros_like(deltas)
    running = np.zeros(deltas.shape[1:])
    for t in range(len(deltas) - 1, -1, -1):
        running = deltas[t] + carries[t] * running
        advantages[t] = running
    return Advantages(advantages.astype(np.float32), (advantages + critic).astype(np.float32))
