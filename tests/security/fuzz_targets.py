"""Fuzz targets: every decoder that bytes from the bus or a log file reach, each taking
arbitrary bytes and allowed to raise RejectedMessage and nothing else.

Shared by the hypothesis properties (test_fuzz.py) and the coverage-guided atheris run
(test_fuzz_atheris.py, in a subprocess with libFuzzer's own time and memory limits).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis

from consumers.hub.service import TelemetryHub
from consumers.nissa.state import NissaState, StateSettings
from consumers.simic import decode_report
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.envelope import (
    BATCH_FIELD,
    MAX_ENVELOPES_PER_BATCH,
    SINGLE_FIELD,
    EnvelopeRules,
    OpenedEntry,
    open_entry,
)
from oona.errors import RejectedMessage
from oona.keys import UNRESTRICTED, Keyring, Signer
from oona.metrics import BusMetrics
from oona.payloads import decode
from oona.settings import OonaSettings
from tamiyo_bus.reports.book import RetryPolicy
from tamiyo_bus.reports.delivery import decode_ack
from tamiyo_bus.reports.state import LogState
from tamiyo_bus.reports.wal import PREFIX, Record, scan_segment
from tamiyo_bus.security.policy_update import PolicyUpdateTransaction, load_tensors
from tests.security.helpers import make_holder

NAMESPACE = "fuzz"
NOW_NS = 1_800_000_000 * 1_000_000_000
SIGNER = Signer.generate()
KEYRING = Keyring.of(SIGNER.public_key(), role=UNRESTRICTED)
RULES = EnvelopeRules(
    stream="telemetry", namespace=NAMESPACE,
    accepted_types=frozenset(pb.MessageType.values()), max_entry_bytes=1 << 20,
)  # fmt: skip


def entry(data: bytes) -> OpenedEntry | None:
    """The first byte picks the field (or both, or neither); the rest is its value."""
    if not data:
        return None
    choice, raw = data[0] % 4, data[1:]
    fields = [{SINGLE_FIELD: raw}, {BATCH_FIELD: raw}, {SINGLE_FIELD: raw, BATCH_FIELD: raw}, {}]
    try:
        opened = open_entry(fields[choice], RULES, KEYRING, now_ns=NOW_NS)
    except RejectedMessage:
        return None
    assert len(opened.envelopes) <= MAX_ENVELOPES_PER_BATCH
    return opened


def _unused_bus() -> Bus:
    """A bus client that never connects: the hub's aggregation path does no IO."""
    settings = OonaSettings(redis_url="unix:///nonexistent/fuzz.sock")
    return Bus(aioredis.Redis(), settings, SIGNER, source="fuzz")


_HUB = TelemetryHub(_unused_bus(), KEYRING)
_NISSA = NissaState(StateSettings(), time.time)


def telemetry_packet(data: bytes) -> None:
    """Decoded and aggregated as the hub does with a routine packet."""
    packet = decode(pb.TelemetryPacket, data)
    source = _HUB.normaliser.source(packet.source or "fuzz")
    _HUB._aggregate(_HUB.window, packet, source, packet.timestamp_ns, pb.MESSAGE_PRIORITY_NORMAL)
    if len(_HUB.window.series) > 10_000:
        _HUB.window = _HUB._new_window(NOW_NS)


def telemetry_aggregate(data: bytes) -> None:
    """Decoded and ingested as Nissa does."""
    _NISSA.ingest(decode(pb.TelemetryAggregate, data))


def field_report(data: bytes) -> None:
    decode_report(data)


def field_report_ack(data: bytes) -> None:
    decode_ack(data)


_TRANSACTION = PolicyUpdateTransaction(make_holder(version=1), KEYRING)


def policy_update(data: bytes) -> None:
    """The whole transaction on arbitrary bytes (refused at the signature at the
    latest), and the weight loader on the same bytes as a payload."""
    _TRANSACTION.apply_serialized(data)


def policy_payload(data: bytes) -> None:
    load_tensors(data)


def wal_records(data: bytes) -> None:
    """Records of every kind with the bytes as body, replayed into a fresh state, then
    the bytes scanned as a segment file."""
    records = [Record(seq, kind, data[:1][0] if data else 0, data) for seq, kind in
               enumerate(range(10))]  # fmt: skip
    state = LogState(RetryPolicy(), retention_s=60.0)
    state.replay(records, BusMetrics())
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "00000001.wal"
        path.write_bytes(data)
        scan_segment(path, max_record_bytes=PREFIX.size + len(data) + 1)


DECODERS: dict[str, Callable[[bytes], object]] = {
    "entry": entry,
    "telemetry_packet": telemetry_packet,
    "telemetry_aggregate": telemetry_aggregate,
    "field_report": field_report,
    "field_report_ack": field_report_ack,
    "policy_update": policy_update,
    "policy_payload": policy_payload,
    "wal_records": wal_records,
}


def run_target(name: str, data: bytes) -> None:
    """One input through one decoder: RejectedMessage is an accepted outcome."""
    with contextlib.suppress(RejectedMessage):
        DECODERS[name](data)


def fuzz_one(data: bytes) -> None:
    """The atheris entry point: the first byte picks the decoder."""
    if data:
        names = sorted(DECODERS)
        run_target(names[data[0] % len(names)], data[1:])
