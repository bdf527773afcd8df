"""CRITICAL telemetry fast path and telemetry hub throughput, on one server in one run.

(a) End-to-end latency of a CRITICAL event, from Kasmina's publish to Nissa's alert
    being raised, p50/p99, while a separate producer process offers a background load
    of NORMAL telemetry (default 5,000 and 20,000 packets/s). The hub and Nissa share
    one asyncio loop in this process, as Weatherlight runs them; the Kasmina publisher
    is its own process. Each CRITICAL names a fresh seed, so each raises a new alert.
    Where the time goes, stage by stage, and how late the shared loop wakes: see
    bench/fastpath_stages.py.
(b) Hub throughput on one core: packets/s the hub consumes (verify, de-duplicate,
    normalise, aggregate, ack) from a pre-filled telemetry stream, this process pinned
    to one core; the reference is Oona consume + ack with a no-op handler on the same
    entries (what the hub's own work costs on top of the bus).

Packets look like Kasmina's per-step packets: 3 metrics (an apply latency in ms, a
seed's alpha and stage, labelled run/seed/layer), batch-signed 64 per entry.

Prints a table; with --json, one final JSON line with the figures, the sizes and the
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from bench.common import bus_server, machine, percentile
from bench.fastpath_stages import FastPathStages, LoopLag
from consumers.hub.service import HubSettings, TelemetryHub
from consumers.nissa.rules import Alert
from consumers.nissa.service import Nissa, NissaSettings
from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import add_event, add_metric
from oona.bus import Bus
from oona.connection import open_redis
from oona.consumer import Consumer, Delivery, Subscription
from oona.keys import UNRESTRICTED, Keyring, Signer
from oona.settings import OonaSettings
from oona.streams import Stream
from producers.telemetry import ProducerSettings, TelemetryProducer

SEEDS = 16
LOOPS = ("asyncio", "uvloop")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop is no dependency of the project: `pip install uvloop` to compare with it."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop  # type: ignore[no-any-return]
    return asyncio.new_event_loop


def step_packet(i: int) -> pb.TelemetryPacket:
    packet = pb.TelemetryPacket(source="kasmina")
    seed = f"s{i % SEEDS}"
    add_metric(packet, "apply_latency", 0.8 + (i % 7) * 0.1, "ms", run="bench")
    add_metric(packet, "seed_alpha", (i % 100) / 100, "1", run="bench", seed=seed, layer="L1")
    add_metric(packet, "seed_stage", 4.0, "1", run="bench", seed=seed, layer="L1")
    return packet


def _bus(url: str, prefix: str, key: bytes, source: str) -> Bus:
    settings = OonaSettings(redis_url=url, key_prefix=prefix)
    signer = Signer.from_private_key(Ed25519PrivateKey.from_private_bytes(key))
    return Bus(open_redis(url, settings), settings, signer, source=source)


def _load(url: str, prefix: str, key: bytes, rate: float, seconds: float, out: Any) -> None:
    """Background NORMAL telemetry at `rate` packets/s, batched by the producer."""

    async def main() -> None:
        bus = _bus(url, prefix, key, "tolaria")
        producer = TelemetryProducer(bus, source="kasmina", settings=ProducerSettings(
            flush_interval_ms=10, flush_at_packets=1_024, buffer_max_packets=200_000))  # fmt: skip
        await producer.start()
        tick_s = 0.005
        per_tick = rate * tick_s
        started = time.perf_counter()
        sent = 0
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(per_tick * (elapsed / tick_s + 1))
            for i in range(sent, due):
                producer.emit(step_packet(i))
            sent = max(sent, due)
            await asyncio.sleep(tick_s)
        await producer.stop()
        await bus.close()
        out.put({"offered": sent, "seconds": time.perf_counter() - started,
                 "dropped": producer.stats.dropped, "shed": bus.metrics.count("shed")})  # fmt: skip

    asyncio.run(main())


def _kasmina(url: str, prefix: str, key: bytes, count: int, delay_s: float, gap_s: float) -> None:
    """CRITICAL events, one per fresh seed, each stamped with its send time."""

    async def main() -> None:
        bus = _bus(url, prefix, key, "kasmina")
        producer = TelemetryProducer(bus, source="kasmina")
        await asyncio.sleep(delay_s)
        for i in range(count):
            packet = pb.TelemetryPacket(source="kasmina", priority=pb.MESSAGE_PRIORITY_CRITICAL)
            add_event(packet, "isolation_violation", priority=pb.MESSAGE_PRIORITY_CRITICAL,
                      run="bench", seed=f"c{i}", sent_ns=time.time_ns())  # fmt: skip
            await producer.send(packet)
            await asyncio.sleep(gap_s)
        await bus.close()

    asyncio.run(main())


async def fast_path(
    url: str,
    signer: Signer,
    key: bytes,
    rate: float,
    seconds: float,
    criticals: int,
    hub_settings: HubSettings,
) -> dict[str, object]:
    prefix = f"bench-fp-{uuid.uuid4().hex[:8]}"
    settings = OonaSettings(redis_url=url, key_prefix=prefix)
    keyring = Keyring.of(signer.public_key(), role=UNRESTRICTED)
    bus = Bus(open_redis(url, settings), settings, signer, source="weatherlight")
    hub = TelemetryHub(bus, keyring, hub_settings, consumer_name="bench-hub")
    nissa = Nissa(bus, keyring, NissaSettings(port=None), consumer_name="bench-nissa")
    latencies_ms: list[float] = []
    all_in = asyncio.Event()
    stages = FastPathStages()
    stages.attach(hub.urgent, nissa.consumer)
    loop_lag = LoopLag()

    def on_alert(alert: Alert) -> None:
        sent_ns = int(alert.attributes.get("sent_ns", "0"))
        if sent_ns:
            alert_ns = time.time_ns()
            stages.on_alert(sent_ns, alert_ns)
            latencies_ms.append((alert_ns - sent_ns) / 1e6)
            if len(latencies_ms) >= criticals:
                all_in.set()

    nissa.on_alert(on_alert)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(hub.run(stop)), asyncio.create_task(nissa.run(stop)),
             asyncio.create_task(loop_lag.run(stop))]  # fmt: skip
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    load = ctx.Process(target=_load, args=(url, prefix, key, rate, seconds, results))
    warmup_s = min(1.5, seconds / 4)
    gap_s = (seconds - warmup_s - 0.5) / criticals
    kasmina = ctx.Process(target=_kasmina, args=(url, prefix, key, criticals, warmup_s, gap_s))
    load.start()
    kasmina.start()
    await asyncio.to_thread(kasmina.join)
    await asyncio.to_thread(load.join)
    offered = await asyncio.to_thread(results.get, True, 30)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), timeout=10)
    received = hub.window.counters["packets_received"] + hub.totals.get("packets_received", 0)
    stop.set()
    await asyncio.gather(*tasks)
    shed = hub.totals.get("packets_shed", 0)
    await bus.close()
    return {
        "offered_rate_packets_per_s": rate,
        "achieved_rate_packets_per_s": round(offered["offered"] / offered["seconds"]),
        "criticals_sent": criticals,
        "alerts_raised": len(latencies_ms),
        "critical_p50_ms": round(statistics.median(latencies_ms), 3) if latencies_ms else None,
        "critical_p99_ms": round(percentile(latencies_ms, 0.99), 3) if latencies_ms else None,
        "critical_max_ms": round(max(latencies_ms), 3) if latencies_ms else None,
        "hub_packets_received": received,
        "hub_packets_shed": shed,
        "producer_dropped": offered["dropped"],
        "bus_shed": offered["shed"],
        "stages_ms": stages.summary(),
        "loop_lag_ms": loop_lag.summary(),
    }


async def fill(bus: Bus, packets: int) -> None:
    producer = TelemetryProducer(bus, source="kasmina", settings=ProducerSettings(
        flush_at_packets=10**9, buffer_max_packets=packets))  # fmt: skip
    for start in range(0, packets, 10_000):
        for i in range(start, min(start + 10_000, packets)):
            producer.emit(step_packet(i))
        await producer.flush()


async def hub_throughput(
    url: str, signer: Signer, packets: int, hub_settings: HubSettings
) -> dict[str, object]:
    prefix = f"bench-hub-{uuid.uuid4().hex[:8]}"
    settings = OonaSettings(redis_url=url, key_prefix=prefix)
    keyring = Keyring.of(signer.public_key(), role=UNRESTRICTED)
    bus = Bus(open_redis(url, settings), settings, signer, source="weatherlight")
    await fill(bus, packets)
    handled = 0

    async def noop(delivery: Delivery) -> None:
        nonlocal handled
        handled += 1

    subscription = Subscription("reference", "c1", (Stream.EMERGENCY, Stream.TELEMETRY),
                                frozenset(pb.MessageType.values()))  # fmt: skip
    reference = Consumer(bus, subscription, noop, keyring)
    await reference.start()
    started = time.perf_counter()
    while handled < packets:
        await reference.poll_once(block=False)
    reference_s = time.perf_counter() - started
    hub = TelemetryHub(bus, keyring, hub_settings, consumer_name="bench-hub")
    await hub.urgent.start()
    await hub.routine.start()
    started = time.perf_counter()
    last_flush = started
    while hub.window.counters["packets_received"] + hub.totals.get("packets_received", 0) < packets:
        await hub.urgent.poll_once(block=False)
        await hub.routine.poll_once(block=False)
        if time.perf_counter() - last_flush >= 1.0:
            await hub.flush()
            last_flush = time.perf_counter()
    await hub.flush()
    hub_s = time.perf_counter() - started
    await bus.close()
    return {
        "hub_packets": packets,
        "hub_packets_per_s": round(packets / hub_s),
        "reference_noop_consume_packets_per_s": round(packets / reference_s),
        "hub_cost_us_per_packet": round((hub_s - reference_s) / packets * 1e6, 2),
    }


async def main_async(args: argparse.Namespace, url: str) -> dict[str, object]:
    load_before = os.getloadavg()[0]
    signer = Signer.generate()
    key = signer.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    hub = HubSettings(yield_every_packets=args.yield_every or HubSettings.yield_every_packets)
    rows = []
    for rate in args.rates:
        rows.append(await fast_path(url, signer, key, rate, args.seconds, args.criticals, hub))
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[0]})  # the hub's one core
    try:
        throughput = await hub_throughput(url, signer, args.hub_packets, hub)
    finally:
        os.sched_setaffinity(0, set(cores))
    # Other processes on the machine inflate latency: the load average says how busy it was.
    load = {"load_average_1m_before": load_before, "load_average_1m_after": os.getloadavg()[0]}
    return {"fast_path": rows, **throughput, **load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    parser.add_argument(
        "--rates",
        type=lambda s: [float(r) for r in s.split(",")],
        default=[5_000.0, 20_000.0],
        help="background NORMAL packets/s, comma-separated",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each load")
    parser.add_argument("--criticals", type=int, default=200, help="CRITICAL events per load")
    parser.add_argument("--hub-packets", type=int, default=100_000)
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="asyncio",
        help="the event loop of the hub and Nissa",
    )
    parser.add_argument("--yield-every", type=int, default=0,
                        help="the hub's yield_every_packets (0: its default)")  # fmt: skip
    args = parser.parse_args()
    with bus_server() as (url, server_name, server):
        if server is not None and len(os.sched_getaffinity(0)) > 1:
            # keep the server off the hub's core
            os.sched_setaffinity(server.pid or 0, set(sorted(os.sched_getaffinity(0))[1:]))
        with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
            result = runner.run(main_async(args, url))
    print(f"server: {server_name}; machine: {os.cpu_count()} cores; load average (1 min) "
          f"{result['load_average_1m_before']:.2f} before, "
          f"{result['load_average_1m_after']:.2f} after")  # fmt: skip
    print(f"  {'background NORMAL load':<28}{'p50':>10}{'p99':>10}{'max':>10}  alerts  shed")
    for row in result["fast_path"]:  # type: ignore[attr-defined]
        print(f"  {row['achieved_rate_packets_per_s']:>10,} packets/s (of "
              f"{row['offered_rate_packets_per_s']:>6,.0f})"
              f"{row['critical_p50_ms']:>8} ms{row['critical_p99_ms']:>7} ms"
              f"{row['critical_max_ms']:>7} ms  {row['alerts_raised']:>3}/{row['criticals_sent']}"
              f"  {row['hub_packets_shed']}")  # fmt: skip
    for row in result["fast_path"]:  # type: ignore[attr-defined]
        print(f"  stages at {row['offered_rate_packets_per_s']:,.0f} packets/s, ms "
              "(p50 / p99 / mean in the slowest 5 %):")  # fmt: skip
        for stage, ms in row["stages_ms"].items():
            print(f"    {stage:<16}{ms['p50']:>8}{ms['p99']:>9}{ms['mean_in_slowest_5pct']:>9}")
        lag = row["loop_lag_ms"]
        print(f"    loop wakes late by p50 {lag.get('p50')} ms, p99 {lag.get('p99')} ms, "
              f"max {lag.get('max')} ms")  # fmt: skip
    print(f"  hub throughput on one core: {result['hub_packets_per_s']:,} packets/s "
          f"(Oona no-op consume: {result['reference_noop_consume_packets_per_s']:,} packets/s; "
          f"hub work {result['hub_cost_us_per_packet']} us/packet)")  # fmt: skip
    if args.json:
        result.update({
            "bench": "fastpath",
            "goals": {"critical_p99_ms_at_5000": 10.0, "hub_packets_per_s": 20_000},
            "sizes": {"seconds_per_load": args.seconds, "criticals_per_load": args.criticals,
                      "metrics_per_packet": 3, "seeds": SEEDS, "envelopes_per_entry": 64},
            "server": server_name,
            "loop": args.loop,
            "hub_yield_every_packets": args.yield_every or HubSettings.yield_every_packets,
            "machine": machine(),
        })  # fmt: skip
        print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
