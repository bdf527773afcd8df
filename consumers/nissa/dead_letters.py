"""How much each dead-letter stream grew lately (pure; the clock is the caller's).

Nissa samples, per stream, how many records were ever added to its dead-letter stream
(the server's count, which trimming never lowers) and turns the samples into growth
over the last `window_s`. The growth feeds the alert rules as the series
``oona.dead_letters_added{stream}``: by default ``dead_letters_growing`` fires while a
dead-letter stream grew within the window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

DEAD_LETTERS_ADDED = "oona.dead_letters_added"


@dataclass(frozen=True)
class Growth:
    """One window's growth of one dead-letter stream, as an alert rule reads a sample."""

    value: float

    @property
    def count(self) -> int:
        return 1

    @property
    def sum(self) -> float:
        return self.value

    @property
    def min(self) -> float:
        return self.value

    @property
    def max(self) -> float:
        return self.value

    @property
    def last(self) -> float:
        return self.value


class DeadLetterGrowth:
    """Samples of the all-time counts; growth is measured from the newest sample at
    least `window_s` old (or the oldest kept). A stream missing from a sample had no
    dead letters yet; the first sample is the baseline, so records that were there
    before Nissa started do not count as growth."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def observe(self, now_s: float, added: Mapping[str, int]) -> dict[str, int]:
        """Growth per stream since the window's start, given this sample."""
        sample = dict(added)
        if not self._samples:
            self._samples.append((now_s, sample))
            return dict.fromkeys(sample, 0)
        while len(self._samples) > 1 and now_s - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        _, baseline = self._samples[0]
        self._samples.append((now_s, sample))
        streams = baseline.keys() | sample.keys()
        return {s: sample.get(s, 0) - baseline.get(s, 0) for s in sorted(streams)}
