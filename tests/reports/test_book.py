"""The delivery schedule, with a hand-driven clock: backoff, parking, flow control."""

from __future__ import annotations

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.reports.book import ReportBook, ReportEntry, ReportState, RetryPolicy
from tamiyo_bus.reports.records import Ack, Park, Unpark


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _book(clock: Clock, reports: int, **policy: float) -> tuple[ReportBook, list[str]]:
    book = ReportBook(RetryPolicy(**policy), clock=clock, jitter=lambda: 1.0)  # type: ignore[arg-type]
    ids = [f"fr-{i:032x}" for i in range(reports)]
    for seq, report_id in enumerate(ids, start=1):
        book.add(pb.FieldReport(report_id=report_id), b"", pb.MESSAGE_PRIORITY_NORMAL, seq)
    return book, ids


def _ids(entries: list[ReportEntry]) -> list[str]:
    return [e.report_id for e in entries]


def test_unacked_reports_come_back_with_doubling_waits_then_are_parked() -> None:
    clock = Clock()
    book, [only] = _book(clock, 1, ack_timeout_ms=1_000.0, max_attempts=3)
    waits = []
    for _ in range(3):
        publish, park = book.take_due(10)
        assert (_ids(publish), park) == ([only], [])
        book.published([only])
        wait = book.seconds_until_due()
        assert wait is not None
        waits.append(wait)
        assert book.take_due(10) == ([], [])  # not due before its wait is over
        clock.now += wait
    assert waits == [1.0, 2.0, 4.0]
    publish, park = book.take_due(10)
    assert (publish, _ids(park)) == ([], [only])  # out of attempts: to be parked


def test_a_failed_publish_uses_no_attempt() -> None:
    clock = Clock()
    book, [only] = _book(clock, 1, max_attempts=1)
    for _ in range(5):
        publish, _ = book.take_due(10)
        assert _ids(publish) == [only]
        book.requeue([only], 0.5)
        clock.now += 0.5
    entry = book.get(only)
    assert entry is not None and entry.attempts == 0


def test_at_most_max_in_flight_reports_await_an_ack() -> None:
    clock = Clock()
    book, ids = _book(clock, 5, max_in_flight_reports=2)
    publish, _ = book.take_due(10)
    assert _ids(publish) == ids[:2]  # oldest first
    book.published(ids[:2])
    assert book.take_due(10) == ([], [])  # the others wait in the log
    wait = book.seconds_until_due()
    assert wait is not None and wait > 0  # only the retries of the two in flight

    assert book.apply_ack(Ack(ids[0], 1, "simic"), seq=10)
    assert book.seconds_until_due() == 0.0
    publish, _ = book.take_due(10)
    assert _ids(publish) == [ids[2]]
    assert book.in_flight == 2


def test_a_parked_report_frees_its_slot_and_unparked_waits_for_one() -> None:
    clock = Clock()
    book, ids = _book(clock, 3, max_in_flight_reports=1, max_attempts=1)
    book.take_due(10)
    book.published([ids[0]])
    clock.now += 10.0
    _, [parked] = book.take_due(10)
    assert book.apply_park(Park(parked.report_id, parked.attempts), seq=10)
    publish, _ = book.take_due(10)
    assert _ids(publish) == [ids[1]]
    assert book.apply_unpark(Unpark(ids[0], "operator"), seq=11)
    assert book.state_of(ids[0]) is ReportState.PENDING
    assert book.take_due(10) == ([], [])  # unparked, queued behind the slot holder
