"""What a hostile entry costs the consumer that refuses it (issue 17).

Each kind of entry a writer without a key (or with a key of the wrong role) can put on
a stream is opened with `oona.envelope.open_entry` as a consumer does, and the time to
refuse it is measured (p50 / p95 / p99, microseconds), with the reason it was refused.
A valid signed batch of 64 envelopes is the reference of an accepted entry. For the
batch of a million empty envelopes, what parsing it first would cost (the check after
the parse: time and resident memory grown) is measured once, last, in the same fresh
process.

Prints a table; with --json, one final JSON line with the figures, the sizes and the
machine.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, percentiles
from leyline_pb import leyline_pb2 as pb
from oona.envelope import (
    BATCH_FIELD,
    SINGLE_FIELD,
    EnvelopeRules,
    make_envelope,
    open_entry,
    seal,
    seal_batch,
)
from oona.errors import RejectedMessage
from oona.keys import Keyring, Role, Signer

NAMESPACE = "bench"
STREAM = "telemetry"
TELEMETRY = pb.MESSAGE_TYPE_TELEMETRY
MILLION = 1_000_000
TOLARIA = Role(
    "tolaria",
    publishes=frozenset({(STREAM, TELEMETRY)}),
    sources=frozenset({"tolaria"}),
)


def _envelope(**fields: object) -> pb.BusEnvelope:
    values: dict[str, object] = {
        "stream": STREAM, "message_type": TELEMETRY, "payload": b"x" * 200, "source": "tolaria",
    }  # fmt: skip
    values.update(fields)
    return make_envelope(**values)  # type: ignore[arg-type]


def entries(signer: Signer) -> dict[str, dict[bytes, bytes]]:
    """The hostile entries, and one valid batch as the reference."""
    negative = pb.BusEnvelope(message_type=-1, signature=b"x" * 64)  # type: ignore[arg-type]
    unknown_type = _envelope()
    unknown_type.message_type = 4242  # type: ignore[assignment]
    wrong_role = _envelope(stream=STREAM, source="tamiyo")
    over_limit = [_envelope() for _ in range(65)]
    return {
        "negative_enum_unsigned": {SINGLE_FIELD: negative.SerializeToString()},
        "unknown_type_signed": {SINGLE_FIELD: seal(unknown_type, signer, namespace=NAMESPACE)},
        "other_source_signed": {SINGLE_FIELD: seal(wrong_role, signer, namespace=NAMESPACE)},
        "batch_65_signed": {BATCH_FIELD: seal_batch(over_limit, signer, namespace=NAMESPACE)},
        "million_empty_envelopes_2mb": {BATCH_FIELD: b"\x12\x00" * MILLION},
        "oversized_9mib": {SINGLE_FIELD: b"\x0a" + b"\xff" * (9 << 20)},
        "copied_from_other_namespace": {
            SINGLE_FIELD: seal(_envelope(), signer, namespace="another-deployment")
        },
        "valid_batch_64": {
            BATCH_FIELD: seal_batch([_envelope() for _ in range(64)], signer, namespace=NAMESPACE)
        },
    }


def time_open(
    fields: dict[bytes, bytes], rules: EnvelopeRules, keyring: Keyring, samples: int
) -> tuple[list[float], str]:
    """Seconds per open, and the outcome (the rejection reason, or ``accepted``)."""
    outcome = ""
    times: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        try:
            open_entry(fields, rules, keyring, now_ns=time.time_ns())
            outcome = "accepted"
        except RejectedMessage as rejection:
            outcome = rejection.reason
        times.append(time.perf_counter() - started)
    return times, outcome


def parse_first(raw: bytes) -> tuple[float, float]:
    """Seconds and MiB of resident memory grown to parse the batch and list its
    envelopes before checking it (what opening an entry did before its count bound)."""
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    envelopes = list(pb.EnvelopeBatch.FromString(raw).envelopes)
    count = len(envelopes)
    elapsed = time.perf_counter() - started
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib
    assert count == MILLION
    return elapsed, grown_kib / 1024


def run(args: argparse.Namespace) -> dict[str, object]:
    signer = Signer.generate()
    keyring = Keyring.of(signer.public_key(), role=TOLARIA)
    rules = EnvelopeRules(
        stream=STREAM, namespace=NAMESPACE, accepted_types=frozenset({TELEMETRY}),
        max_entry_bytes=8 << 20,
    )  # fmt: skip
    figures: dict[str, object] = {}
    for name, fields in entries(signer).items():
        times, outcome = time_open(fields, rules, keyring, args.samples)
        figures[name] = {"outcome": outcome, **percentiles(times, scale=1e6, digits=1)}
    parse_s, parse_mib = parse_first(b"\x12\x00" * MILLION)
    return {
        "bench": "hostile",
        "entries_us": figures,
        "million_batch_parse_first_s": round(parse_s, 3),
        "million_batch_parse_first_rss_mib": round(parse_mib, 1),
        "sizes": {
            "samples_per_entry": args.samples,
            "lane_max_entry_bytes": rules.max_entry_bytes,
            "million_batch_bytes": 2 * MILLION,
            "payload_bytes": 200,
        },
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    parser.add_argument("--samples", type=int, default=500, help="opens per entry kind")
    args = parser.parse_args()
    result = run(args)
    print(f"{'entry':<30} {'outcome':<20} {'p50 us':>10} {'p95 us':>10} {'p99 us':>10}")
    rows: dict[str, dict[str, object]] = result["entries_us"]  # type: ignore[assignment]
    for name, row in rows.items():
        print(
            f"{name:<30} {row['outcome']!s:<20} {row['p50']:>10} {row['p95']:>10} {row['p99']:>10}"
        )
    show: Callable[[str], object] = result.__getitem__
    print(
        f"parsing the million-envelope batch first: {show('million_batch_parse_first_s')} s, "
        f"+{show('million_batch_parse_first_rss_mib')} MiB resident"
    )
    if args.json:
        print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
