"""GAE over a batch of joined decisions, in chains of consecutive decisions (pure).

A batch holds the decisions that completed since the last update, run by run in
decision-step order; consecutive decisions of a run form a chain when each is the
other's successor. Within a chain the trace runs as on a simulated episode. Where a
chain stops before its run did (the successor is not in the batch: used earlier, still
waiting, expired or held back), the trace is cut there and the last decision
bootstraps from the critic's value of its successor's state; a decision after which
the run ended is terminal and bootstraps nothing.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tamiyo_bus.learning.gae import Advantages, GAESettings, compute_gae


def chained_gae(
    rewards: npt.ArrayLike,
    values: npt.ArrayLike,
    continues: npt.ArrayLike,
    successor_values: npt.ArrayLike,
    terminal: npt.ArrayLike,
    settings: GAESettings,
) -> Advantages:
    """All arrays are [T] in batch order. ``continues[t]``: decision t + 1 is t's
    successor; ``successor_values[t]``: the value of t's successor state where it does
    not continue (read only there, and never where ``terminal[t]``)."""
    value = np.asarray(values, np.float32)
    chained = np.asarray(continues, np.bool_)
    ended = np.asarray(terminal, np.bool_)
    if (chained & ended).any():
        raise ValueError("a terminal decision has no successor to continue into")
    shifted = np.concatenate((value[1:], np.zeros(1, np.float32)))
    following = np.where(chained, shifted, np.asarray(successor_values, np.float32))
    cut = ~chained & ~ended
    return compute_gae(rewards, value, following, ended, cut, settings)
