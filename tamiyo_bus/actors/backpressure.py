"""The actors' backpressure rule, pure.

The trajectories stream is capped and trimmed only past what every group acked, so its
fill is the learner's lag: a lagging learner makes publishes wait (``pushback_wait_ms``)
and fail, and the publisher holds the segments in its bounded queue. An actor plays
its next episode only when that episode's segments (judged by the last episode's count)
fit in the queue beside what is waiting; otherwise it waits, up to
``backpressure_wait_s``, and past it plays anyway, and the publisher sheds its oldest
queued segments (the most off-policy ones) to take the new.
"""

from __future__ import annotations


def episode_fits(pending_segments: int, episode_segments: int, queue_max_segments: int) -> bool:
    """Whether an episode of ``episode_segments`` can be queued without shedding; an
    empty queue always takes one (an episode larger than the queue sheds its own)."""
    return pending_segments == 0 or pending_segments + episode_segments <= queue_max_segments
