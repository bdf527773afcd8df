"""Signing and verification cost of the security envelope, in one run.

(a) raw Ed25519 sign and verify per second on a message of the envelope's size (the
    reference: the `cryptography` primitive alone),
(b) single envelopes: seal (encode + sign) and open (parse + verify + header checks)
    per second,
(c) batches of 64 envelopes under one signature: envelopes sealed and opened per
    second,
(d) AdaptationCommand sign + verify (signature, freshness, in-memory replay cache)
    latency p50 / p95 / p99 against the 0.3 ms p95 budget, with the raw sign + verify
    pair timed in the same loop as its reference.

Prints a table; with --json, one final JSON line with the figures, the sizes and the
machine (cores, python, cryptography and OpenSSL versions).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cryptography
import orjson
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, percentile
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
from oona.keys import UNRESTRICTED, Keyring, Signer
from tamiyo_bus.security.commands import (
    CommandSigner,
    CommandVerifier,
    CommandVerifierSettings,
    stamp_command,
)

PAYLOAD = b"x" * 200
BATCH = 64
STREAM = "telemetry"
COMMAND_BUDGET_P95_MS = 0.3
NAMESPACE = "bench"
RULES = EnvelopeRules(
    stream=STREAM, namespace=NAMESPACE, accepted_types=frozenset({pb.MESSAGE_TYPE_TELEMETRY})
)


def per_second(operation: Callable[[], object], count: int) -> float:
    """Calls of `operation` per second over `count` calls (after a short warm-up)."""
    for _ in range(min(count // 10, 200)):
        operation()
    started = time.perf_counter()
    for _ in range(count):
        operation()
    return count / (time.perf_counter() - started)


def envelope(payload: bytes = PAYLOAD) -> pb.BusEnvelope:
    return make_envelope(
        stream=STREAM, message_type=pb.MESSAGE_TYPE_TELEMETRY, payload=payload, source="bench"
    )


def command(step: int) -> pb.AdaptationCommand:
    """A seed command of realistic size: payload, parameters and annotations set."""
    cmd = pb.AdaptationCommand(
        version=1, command_type=pb.COMMAND_TYPE_SEED, target_seed_id="seed-12",
        reason="loss_plateau", policy_version=42, global_step=step, training_run_id="run-bench",
    )  # fmt: skip
    cmd.seed.operation = pb.SEED_OP_GERMINATE
    cmd.seed.blueprint_id = "bp-conv-small"
    cmd.seed.blend_method = pb.BLEND_METHOD_COSINE
    cmd.seed.alpha_steps = 200
    cmd.seed.parameters["lr_scale"] = 0.5
    cmd.annotations["risk"] = "green"
    return cmd


def bench_raw(signer: Signer, count: int) -> tuple[float, float]:
    data = seal(envelope(), signer, namespace=NAMESPACE)
    signature = signer.sign(data)
    public = signer.public_key()
    return per_second(lambda: signer.sign(data), count), per_second(
        lambda: public.verify(signature, data), count
    )


def bench_single(signer: Signer, keyring: Keyring, count: int) -> tuple[float, float]:
    envelopes = [envelope() for _ in range(count + 200)]
    it = iter(envelopes)
    sealed = per_second(lambda: seal(next(it), signer, namespace=NAMESPACE), count)
    fields = {SINGLE_FIELD: seal(envelope(), signer, namespace=NAMESPACE)}
    now_ns = time.time_ns()
    opened = per_second(lambda: open_entry(fields, RULES, keyring, now_ns=now_ns), count)
    return sealed, opened


def bench_batch(signer: Signer, keyring: Keyring, batches: int) -> tuple[float, float]:
    chunks = [[envelope() for _ in range(BATCH)] for _ in range(8)]
    sealed = per_second(lambda: seal_batch(chunks[0], signer, namespace=NAMESPACE), batches) * BATCH
    fields = {BATCH_FIELD: seal_batch(chunks[1], signer, namespace=NAMESPACE)}
    now_ns = time.time_ns()
    opened = per_second(lambda: open_entry(fields, RULES, keyring, now_ns=now_ns), batches) * BATCH
    return sealed, opened


def bench_commands(signer: Signer, keyring: Keyring, samples: int) -> dict[str, float]:
    """Per-command sign + verify latency, and the raw primitive pair in the same loop."""
    command_signer = CommandSigner(signer)
    verifier = CommandVerifier(keyring, CommandVerifierSettings())
    public = signer.public_key()
    pipeline_ms: list[float] = []
    raw_ms: list[float] = []
    for step in range(samples + 200):
        cmd = command(step)
        stamp_command(cmd, "tamiyo")
        started = time.perf_counter_ns()
        command_signer.sign(cmd)
        verifier.verify(cmd)
        elapsed = time.perf_counter_ns() - started
        data = cmd.SerializeToString()
        started = time.perf_counter_ns()
        public.verify(signer.sign(data), data)
        raw = time.perf_counter_ns() - started
        if step >= 200:  # warm-up
            pipeline_ms.append(elapsed / 1e6)
            raw_ms.append(raw / 1e6)
    return {
        "command_sign_verify_p50_ms": round(percentile(pipeline_ms, 0.50), 4),
        "command_sign_verify_p95_ms": round(percentile(pipeline_ms, 0.95), 4),
        "command_sign_verify_p99_ms": round(percentile(pipeline_ms, 0.99), 4),
        "raw_sign_verify_p50_ms": round(percentile(raw_ms, 0.50), 4),
        "raw_sign_verify_p95_ms": round(percentile(raw_ms, 0.95), 4),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    signer = Signer.generate()
    keyring = Keyring.of(signer.public_key(), role=UNRESTRICTED)
    raw_sign, raw_verify = bench_raw(signer, args.ops)
    single_seal, single_open = bench_single(signer, keyring, args.ops)
    batch_seal, batch_open = bench_batch(signer, keyring, max(args.ops // BATCH, 50))
    commands = bench_commands(signer, keyring, args.commands)
    p95 = commands["command_sign_verify_p95_ms"]
    return {
        "bench": "crypto",
        "raw_sign_per_s": round(raw_sign),
        "raw_verify_per_s": round(raw_verify),
        "single_seal_per_s": round(single_seal),
        "single_open_per_s": round(single_open),
        "batch_seal_envelopes_per_s": round(batch_seal),
        "batch_open_envelopes_per_s": round(batch_open),
        **commands,
        "command_budget_p95_ms": COMMAND_BUDGET_P95_MS,
        "command_within_budget": p95 <= COMMAND_BUDGET_P95_MS,
        "sizes": {
            "payload_bytes": len(PAYLOAD),
            "batch_envelopes": BATCH,
            "ops": args.ops,
            "command_samples": args.commands,
            "command_bytes": len(command(0).SerializeToString()),
        },
        "machine": machine(
            cryptography=cryptography.__version__,
            openssl=openssl_backend.openssl_version_text(),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    parser.add_argument("--ops", type=int, default=5_000, help="operations per throughput figure")
    parser.add_argument("--commands", type=int, default=5_000, help="command latency samples")
    args = parser.parse_args()
    result = run(args)
    r = result
    budget = "within" if r["command_within_budget"] else "OVER"
    rows = [
        ("(a) raw Ed25519 sign / verify",
         f"{r['raw_sign_per_s']:,} / {r['raw_verify_per_s']:,} per s"),
        ("(b) single envelope seal / open",
         f"{r['single_seal_per_s']:,} / {r['single_open_per_s']:,} per s"),
        (f"(c) batch of {BATCH}: envelopes sealed / opened",
         f"{r['batch_seal_envelopes_per_s']:,} / {r['batch_open_envelopes_per_s']:,} per s"),
        ("(d) command sign+verify p50 / p95 / p99",
         f"{r['command_sign_verify_p50_ms']} / {r['command_sign_verify_p95_ms']} / "
         f"{r['command_sign_verify_p99_ms']} ms"),
        ("    raw sign+verify pair p50 / p95 (reference)",
         f"{r['raw_sign_verify_p50_ms']} / {r['raw_sign_verify_p95_ms']} ms"),
        ("    budget p95", f"{COMMAND_BUDGET_P95_MS} ms: {budget}"),
    ]  # fmt: skip
    machine = r["machine"]
    assert isinstance(machine, dict)
    print(f"machine: {machine['cores']} cores, python {machine['python']}, "
          f"cryptography {machine['cryptography']}, {machine['openssl']}")  # fmt: skip
    for label, value in rows:
        print(f"  {label:<48} {value}")
    if args.json:
        print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
