"""The training's progress bar: one line per update.

Shows the update count, the rollout's mean episode return (and the best so far), the
policy's entropy, the update's approx KL and clip fraction, the critic's explained
variance, the decisions learnt from and the elapsed time. On a terminal the line is
redrawn in place; otherwise (CI logs) each update prints its own line.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from tamiyo_bus.learning.trainer import TrainingStats

BAR_WIDTH = 24


class TrainingProgress:
    def __init__(self, total_updates: int, stream: TextIO | None = None) -> None:
        self.total_updates = max(total_updates, 1)
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty()
        self.best_return = -math.inf
        self._started = time.monotonic()

    def on_update(self, stats: TrainingStats, done: int) -> None:
        """``done``: updates of this command so far (a resumed run counts from 0)."""
        self.best_return = max(self.best_return, stats.mean_episode_return)
        line = self.line(stats, done)
        if self.interactive:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()

    def line(self, stats: TrainingStats, done: int) -> str:
        share = min(done / self.total_updates, 1.0)
        filled = int(share * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        ppo = stats.ppo
        elapsed = time.monotonic() - self._started
        return (
            f"update {stats.update} [{bar}] {share:4.0%} | return {stats.mean_episode_return:.3f} "
            f"(best {self.best_return:.3f}) | entropy {ppo.entropy:.3f} | kl {ppo.approx_kl:.4f} "
            f"| clip {ppo.clip_fraction:.2f} | expl.var {ppo.explained_variance:.2f} | "
            f"{stats.decisions:,} decisions | {elapsed:4.0f}s"
        )
