"""The learner's experience store: a redelivered entry changes nothing, reports join
only their own signer's decisions, a restart keeps everything, and pruning keeps what
is still waited on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tamiyo_bus.simic.join import Completed, Expiry
from tamiyo_bus.simic.simulated import SimulatedExperience
from tamiyo_bus.simic.store import Consumed, ExperienceStore

from .helpers import SIGNER, fill, initial_policy, simulated


@pytest.fixture(scope="module")
def experience() -> SimulatedExperience:
    return simulated(initial_policy(), runs=2)


def _ids(store: ExperienceStore) -> list[tuple[str, list[int]]]:
    return [(run, [f.decision_step for f in chain]) for run, chain, _ in store.pending_chains()]


def test_a_redelivered_segment_or_report_changes_nothing(
    tmp_path: Path, experience: SimulatedExperience
) -> None:
    store = ExperienceStore(tmp_path / "experience.sqlite3")
    fill(store, experience, now_s=0.0)
    before = (_ids(store), store.counts())
    segment, report = experience.segments[0], experience.reports[0]
    assert store.add_segment(segment, SIGNER, held_out=[False] * len(segment.steps), now_s=1.0) == 0
    assert not store.add_report(report, report.SerializeToString(), SIGNER, now_s=1.0)
    counts = store.counts()
    assert _ids(store) == before[0]
    assert counts["decisions_stored"] == before[1]["decisions_stored"] == 100
    assert counts["decisions_duplicate"] == len(segment.steps)
    assert counts["reports_duplicate"] == 1
    store.close()


def test_a_report_joins_only_the_decision_of_its_own_signer(
    tmp_path: Path, experience: SimulatedExperience
) -> None:
    store = ExperienceStore(tmp_path / "experience.sqlite3")
    fill(store, SimulatedExperience(experience.segments, []), now_s=0.0)
    for report in experience.reports:  # the same reports, signed by another key
        store.add_report(report, report.SerializeToString(), "squatter", now_s=0.0)
    acted = [f for _, chain, _ in store.pending_chains() for f in chain if f.acted]
    assert acted and all(f.report_terms is None for f in acted)
    assert store.expire_unmatched_reports(now_s=10.0, wait_s=10.0) == len(experience.reports)
    assert store.counts()["reports_unmatched"] == len(experience.reports)
    store.close()


def test_a_restart_keeps_decisions_reports_joins_and_counters(
    tmp_path: Path, experience: SimulatedExperience
) -> None:
    path = tmp_path / "experience.sqlite3"
    store = ExperienceStore(path)
    fill(store, experience, now_s=0.0)
    run, chain, _ = store.pending_chains()[0]
    first, second = chain[0].decision_step, chain[1].decision_step
    store.apply_join(
        run, [Completed(first, 0.5, second)], [(chain[-1].decision_step, Expiry.NO_REPORT)]
    )
    store.mark_used([Consumed((run, first))], batch=3)
    before = (store.pending_chains(), store.counts(), store.ready())
    store.close()

    reopened = ExperienceStore(path)
    assert (reopened.pending_chains(), reopened.counts(), reopened.ready()) == before
    assert reopened.release_after(2) == 1  # batch 3 was not checkpointed: put back
    assert reopened.ready()[0] + reopened.ready()[1] == 1
    (decision,) = reopened.complete_decisions(10)
    assert (decision.reward, decision.next_step) == (0.5, second)
    reopened.close()


def test_pruning_drops_old_used_rows_but_keeps_each_runs_last_decision(
    tmp_path: Path, experience: SimulatedExperience
) -> None:
    store = ExperienceStore(tmp_path / "experience.sqlite3")
    fill(store, experience, now_s=0.0)
    last = {}
    for run, chain, _ in store.pending_chains():
        steps = [f.decision_step for f in chain]
        last[run] = steps[-1]
        store.apply_join(run, [Completed(s, 0.0, None) for s in steps], [])
        store.mark_used([Consumed((run, s)) for s in steps], batch=1)
    assert store.prune(now_s=5.0, retain_s=10.0) == 0  # too young
    assert store.prune(now_s=20.0, retain_s=10.0) == 100 - 2
    kept = store.decisions_at(last.items())
    assert sorted(kept) == sorted(last.items())
    assert all(store.topology_arrays(d.topology) is not None for d in kept.values())
    store.close()
