"""A vectorised cart-pole for learning tests: the classic frictionless equations of
motion (Euler steps of 20 ms), a pole that falls past 12 degrees or a cart that leaves
the track ends an episode (terminated), and a time limit cuts it (truncated)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

GRAVITY = 9.8
CART_MASS = 1.0
POLE_MASS = 0.1
POLE_HALF_LENGTH = 0.5
FORCE = 10.0
STEP_S = 0.02
MAX_ANGLE_RAD = 12 * 2 * np.pi / 360
MAX_POSITION = 2.4
_TOTAL_MASS = CART_MASS + POLE_MASS
_POLE_MOMENT = POLE_MASS * POLE_HALF_LENGTH

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Step:
    observation: FloatArray  # [N, 4], already reset where the episode ended
    reward: FloatArray  # [N]
    terminated: BoolArray
    truncated: BoolArray
    final_observation: FloatArray  # [N, 4] the state the step reached, before any reset


class CartPoles:
    """``n`` independent cart-poles that reset themselves when an episode ends."""

    def __init__(self, n: int, seed: int, max_steps: int = 200) -> None:
        self.rng = np.random.default_rng(seed)
        self.max_steps = max_steps
        self.state = self._initial(n)
        self.elapsed = np.zeros(n, dtype=np.int64)
        self.finished_lengths: list[int] = []

    def _initial(self, n: int) -> npt.NDArray[np.float64]:
        return self.rng.uniform(-0.05, 0.05, size=(n, 4))

    @property
    def observation(self) -> FloatArray:
        return self.state.astype(np.float32)

    def step(self, push_right: npt.NDArray[np.int64]) -> Step:
        x, x_dot, theta, theta_dot = self.state.T
        force = np.where(push_right == 1, FORCE, -FORCE)
        cos, sin = np.cos(theta), np.sin(theta)
        temp = (force + _POLE_MOMENT * theta_dot**2 * sin) / _TOTAL_MASS
        theta_acc = (GRAVITY * sin - cos * temp) / (
            POLE_HALF_LENGTH * (4.0 / 3.0 - POLE_MASS * cos**2 / _TOTAL_MASS)
        )
        x_acc = temp - _POLE_MOMENT * theta_acc * cos / _TOTAL_MASS
        self.state = np.stack(
            (
                x + STEP_S * x_dot,
                x_dot + STEP_S * x_acc,
                theta + STEP_S * theta_dot,
                theta_dot + STEP_S * theta_acc,
            ),
            axis=1,
        )
        self.elapsed += 1
        final = self.observation
        terminated = (np.abs(self.state[:, 0]) > MAX_POSITION) | (
            np.abs(self.state[:, 2]) > MAX_ANGLE_RAD
        )
        truncated = ~terminated & (self.elapsed >= self.max_steps)
        done = terminated | truncated
        self.finished_lengths.extend(self.elapsed[done].tolist())
        self.state[done] = self._initial(int(done.sum()))
        self.elapsed[done] = 0
        reward = np.ones(len(done), dtype=np.float32)
        return Step(self.observation, reward, terminated, truncated, final)
