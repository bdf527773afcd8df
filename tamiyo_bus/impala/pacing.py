"""When the ranks step (no IO): one rule every rank applies to the same agreed figures,
so that all take the same path.

Each round every rank says whether it is stopping, whether it holds a full batch and
whether its wait for a starved rank ran out (``sum_across``). Any rank stopping stops
them all. No full batch anywhere: they wait. Every rank full: they step. Some full,
some not: they wait for the starved ones, up to ``starved_wait_s`` from the round the
first rank was full; then they step on what each holds, and a rank holding nothing
adds a zero gradient (the step weighs each rank by its transitions, so the step is the
one a single process makes on the segments there are).
"""

from __future__ import annotations

from enum import StrEnum


class Pace(StrEnum):
    STOP = "stop"
    WAIT = "wait"
    STEP = "step"


def agreed_pace(stopping: int, full: int, waited_out: int, world_size: int) -> Pace:
    """The round's path from the number of ranks stopping, holding a full batch, and
    whose wait for a starved rank ran out."""
    if stopping:
        return Pace.STOP
    if full == 0:
        return Pace.WAIT
    if full == world_size or waited_out:
        return Pace.STEP
    return Pace.WAIT
