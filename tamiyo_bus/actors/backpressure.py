"""The actors' backpressure rule, pure.

The trajectories stream is capped and trimmed only past what every group acked, so its
fill is the learner's lag: a lagging learner makes publishes wait (``pushback_wait_ms``)
and fail, and the publisher holds the segments in its bounded queue. An actor plays its
next episode only once no more than ``backpressure_resume_segments`` of its segments
wait in that queue (by default none: its last episode is all on the stream); otherwise
it waits, up to ``backpressure_wait_s``, and past it plays anyway. The queue's bound
(``publish_queue_max_segments``) is then only the memory bound of a long outage: past
it the publisher sheds its oldest queued segments (the most off-policy ones).

Pacing on what waits, not on a guess at the next episode's size, keeps episodes whole:
a policy that changes its runs' graphs often cuts them into more segments, and a queue
sized to pace the last episode would shed the start of a larger next one.
"""

from __future__ import annotations


def may_play(pending_segments: int, resume_segments: int) -> bool:
    """Whether the actor may play its next episode with ``pending_segments`` of its
    segments still waiting to be published."""
    return pending_segments <= resume_segments
