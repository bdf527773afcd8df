"""Which decisions of a run are complete, which wait and which expire (pure).

A decision is complete when its successor (the run's next decision, or the run's end)
is known and, if it acted, its field report has arrived, or the run ended
``refused_after_end_s`` ago without it (Kasmina refused the command: no observation
window opened, so no report comes; it is joined as a decision that changed nothing);
it then gets its reward (``simic.reward``), and it is terminal when the run ended after
it. An acted decision still without its report ``report_wait_s`` after it was stored
(its run not ended) expires, and so does a decision whose successor has not come
within ``successor_wait_s`` (a run that died without its end): expired decisions are
counted and never trained on, though an expired successor's state still bootstraps its
predecessor's value. Nothing missing raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from tamiyo_bus.learning.reward import Progress, RewardSettings, RewardTerms
from tamiyo_bus.simic.reward import decision_reward


class Expiry(StrEnum):
    NO_REPORT = "no_report"
    NO_SUCCESSOR = "no_successor"


@dataclass(frozen=True, slots=True)
class DecisionFacts:
    """What the join needs of one stored decision."""

    decision_step: int
    acted: bool
    progress: Progress
    stored_s: float
    pending: bool  # not yet complete nor expired
    report_terms: RewardTerms | None  # its field report's terms; None until it arrives


@dataclass(frozen=True, slots=True)
class Completed:
    decision_step: int
    reward: float
    next_step: int | None  # the successor's decision step; None: the run ended here

    @property
    def terminal(self) -> bool:
        return self.next_step is None


@dataclass(frozen=True, slots=True)
class JoinWaits:
    report_wait_s: float
    successor_wait_s: float
    refused_after_end_s: float


@dataclass(frozen=True, slots=True)
class RunEnd:
    progress: Progress
    stored_s: float


@dataclass(frozen=True)
class RunJoin:
    completed: list[Completed]
    expired: list[tuple[int, Expiry]]


def join_run(
    chain: Sequence[DecisionFacts],
    run_end: RunEnd | None,
    *,
    now_s: float,
    waits: JoinWaits,
    reward_settings: RewardSettings,
) -> RunJoin:
    """Judge the pending decisions of one run; ``chain`` holds them and the decisions
    after them, in decision-step order."""
    completed: list[Completed] = []
    expired: list[tuple[int, Expiry]] = []
    for i, decision in enumerate(chain):
        if not decision.pending:
            continue
        successor = chain[i + 1] if i + 1 < len(chain) else None
        end = run_end.progress if run_end is not None else None
        following = successor.progress if successor is not None else end
        waited_s = now_s - decision.stored_s
        refused = run_end is not None and now_s - run_end.stored_s >= waits.refused_after_end_s
        if decision.acted and decision.report_terms is None and not refused:
            if waited_s >= waits.report_wait_s:
                expired.append((decision.decision_step, Expiry.NO_REPORT))
            continue
        if following is None:
            if waited_s >= waits.successor_wait_s:
                expired.append((decision.decision_step, Expiry.NO_SUCCESSOR))
            continue
        terms = decision.report_terms if decision.acted else None
        completed.append(
            Completed(
                decision.decision_step,
                decision_reward(decision.progress, following, terms, reward_settings),
                None if successor is None else successor.decision_step,
            )
        )
    return RunJoin(completed, expired)
