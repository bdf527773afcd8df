"""The kinds of record in the field-report log and how their bodies are encoded.

The log is the whole state of the field-report side: replaying it in sequence order
rebuilds the open windows (OPEN, EPOCH, EVENT, RUN_END), the reports (REPORT) and
where each stands (ACK, PARK, UNPARK). REPORT bodies are the FieldReport bytes exactly
as published; the others are small JSON objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

import orjson

from leyline_vocab.events import EventKind
from tamiyo_bus.reports.windows import Decision, EpochEnd, ObservedEvent


class Kind(IntEnum):
    OPEN = 1
    EPOCH = 2
    EVENT = 3
    RUN_END = 4
    REPORT = 5
    ACK = 6
    PARK = 7
    UNPARK = 8


@dataclass(frozen=True)
class Ack:
    report_id: str
    acked_at_ns: int
    consumer: str


@dataclass(frozen=True)
class Park:
    report_id: str
    attempts: int


@dataclass(frozen=True)
class Unpark:
    report_id: str
    reason: str


@dataclass(frozen=True)
class RunEnd:
    training_run_id: str


def dump(value: Any) -> bytes:
    """JSON of a record dataclass."""
    return orjson.dumps(asdict(value))


def load_decision(body: bytes) -> Decision:
    return Decision(**orjson.loads(body))


def load_epoch(body: bytes) -> EpochEnd:
    data = orjson.loads(body)
    data["seeds"] = {k: (int(v[0]), v[1]) for k, v in data["seeds"].items()}
    return EpochEnd(**data)


def load_event(body: bytes) -> ObservedEvent:
    data = orjson.loads(body)
    data["kind"] = EventKind(data["kind"])
    return ObservedEvent(**data)


def load_ack(body: bytes) -> Ack:
    return Ack(**orjson.loads(body))


def load_park(body: bytes) -> Park:
    return Park(**orjson.loads(body))


def load_unpark(body: bytes) -> Unpark:
    return Unpark(**orjson.loads(body))


def load_run_end(body: bytes) -> RunEnd:
    return RunEnd(**orjson.loads(body))
