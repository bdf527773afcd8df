"""The reward of one field decision (pure): the simulator trainer's interval reward.

Decision i of a run is rewarded for the interval from its own packet to the next
decision's (or, for the run's last decision, to where the run ended):

    reward(interval_terms(P_i, P_next, rollbacks=, emergencies=, isolation_violations=))

with the risk events counted by decision i's field report when it acted, and none when
it did not (a NO_OP gets no report). The loss, accuracy and parameter terms are the
same as on the simulator, so a policy pre-trained there keeps its value scale here.
"""

from __future__ import annotations

from tamiyo_bus.learning.reward import (
    Progress,
    RewardSettings,
    RewardTerms,
    interval_terms,
    reward,
)


def decision_reward(
    progress: Progress,
    following: Progress,
    report_terms: RewardTerms | None,
    settings: RewardSettings,
) -> float:
    """``report_terms``: what the decision's field report observed (None: no report,
    the decision did not act)."""
    events = report_terms or RewardTerms()
    return reward(
        interval_terms(
            progress,
            following,
            rollbacks=events.rollbacks,
            emergencies=events.emergencies,
            isolation_violations=events.isolation_violations,
        ),
        settings,
    )
