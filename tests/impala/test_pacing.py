"""The ranks' rule each round: any stop stops all; no full batch anywhere, wait; every
rank full, step; some full, wait until a wait ran out, then step on what each holds."""

from __future__ import annotations

import pytest

from tamiyo_bus.impala.pacing import Pace, agreed_pace


@pytest.mark.parametrize(
    ("stopping", "full", "waited_out", "pace"),
    [
        (1, 2, 0, Pace.STOP),
        (1, 0, 0, Pace.STOP),
        (0, 0, 0, Pace.WAIT),
        (0, 0, 1, Pace.WAIT),  # nothing to learn from anywhere: a wait running out alone
        (0, 2, 0, Pace.STEP),
        (0, 1, 0, Pace.WAIT),  # one rank starved: the full one waits for it...
        (0, 1, 1, Pace.STEP),  # ...until a rank's wait ran out
    ],
)
def test_the_ranks_pace(stopping: int, full: int, waited_out: int, pace: Pace) -> None:
    assert agreed_pace(stopping, full, waited_out, world_size=2) is pace
