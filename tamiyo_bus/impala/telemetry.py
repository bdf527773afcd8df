"""What the V-trace learner reports after each update (no IO: the sink it is given
turns it into telemetry, ``weatherlight.impala_learner``). Under torchrun only the lead
rank reports: its counters are every rank's together (the segments, transitions and
policies), its losses those of its own share of the batch."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from tamiyo_bus.impala.learner import ImpalaProgress, ImpalaUpdateStats


@dataclass(frozen=True, slots=True)
class ImpalaReport:
    progress: ImpalaProgress  # a copy
    segments: dict[str, int]  # consumed, rejected, ignored, held_out (the lead rank's)
    policies_published: int  # signed PolicyUpdates the bus took
    buffer_fill: float  # buffered segments / buffer_max_segments
    lag_p50_s: float  # actor-to-learner lag of the latest learnt segments (nan: none)
    lag_p99_s: float
    update: ImpalaUpdateStats | None = None


ImpalaSink = Callable[[ImpalaReport], None]


def lag_percentiles(lags_s: Collection[float]) -> tuple[float, float]:
    """(p50, p99) of ``lags_s``; nan for both when there are none."""
    if not lags_s:
        return math.nan, math.nan
    p50, p99 = np.percentile(np.fromiter(lags_s, dtype=np.float64), [50.0, 99.0])
    return float(p50), float(p99)
