"""`tamiyo-bus impala-learner`: the V-trace learner, one process or one rank of several.

Under torchrun (`torchrun --nproc-per-node 2 -m weatherlight.cli impala-learner ...`)
each rank reads RANK, WORLD_SIZE and LOCAL_RANK from its environment, consumes its own
share of the trajectories stream (consumer `<consumer>-rank<r>` of group
`impala-learner`), and the lead rank gates, publishes and checkpoints. The process's
key (TAMIYO_SIGNING_KEY_FILE) must be Simic's, as for `tamiyo-bus learner`; the ranks
share one server (TAMIYO_REDIS_URL or `--redis-url`). Runs until `--updates` updates
(0: until SIGTERM or SIGINT); every `--status-interval-s` a line gives its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

from leyline_vocab.roles import SOURCE_SIMIC
from oona.bus import Bus
from oona.keyfiles import KeyConfigError
from tamiyo_bus.impala.distributed import (
    RankInfo,
    join_process_group,
    learner_device,
    leave_process_group,
)
from tamiyo_bus.impala.service import ImpalaLearnerService, start_learner
from tamiyo_bus.impala.settings import ImpalaSettings
from weatherlight.learner_cli import EXIT_CONFIG_ERROR, load_keys
from weatherlight.settings import SystemSettings


def status(service: ImpalaLearnerService) -> dict[str, object]:
    p, s = service.learner.progress, service.stats
    return {
        "updates": p.updates,
        "transitions_learnt": p.transitions_learnt,
        "segments_consumed": s.segments_consumed,
        "segments_rejected": s.segments_rejected,
        "candidates_published": p.candidates_published,
        "candidates_rejected": p.candidates_rejected,
        "policy_version": p.running_version,
        "buffered": service.buffered,
    }


async def serve(
    system: SystemSettings, settings: ImpalaSettings, updates: int, status_interval_s: float
) -> int:
    rank = RankInfo.from_env()
    signer, keyring = load_keys(system)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await asyncio.to_thread(join_process_group, rank)
    device = learner_device(rank)
    bus = Bus.connect(system.oona, signer, source=SOURCE_SIMIC)
    name = f"impala-learner[{rank.rank}/{rank.world_size}]"
    try:
        learner = await asyncio.to_thread(start_learner, settings, rank, device, None)
        service = ImpalaLearnerService(
            bus, settings, signer, keyring=keyring, rank=rank, learner=learner, device=device
        )
        print(f"{name}: running from update {learner.progress.updates}", flush=True)
        task = asyncio.create_task(service.run(stop))
        while not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout=status_interval_s)
            if updates and learner.progress.updates >= updates:
                stop.set()
            print(f"{name}: {json.dumps(status(service))}", flush=True)
        await task
    finally:
        await bus.close()
        await asyncio.to_thread(leave_process_group)
    print(f"{name}: stopped", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    system = SystemSettings.from_env()
    if args.redis_url:
        system = replace(system, oona=replace(system.oona, redis_url=args.redis_url))
    settings = system.impala
    overrides: dict[str, object] = {
        "batch_segments": args.batch_segments,
        "updates_per_publish": args.updates_per_publish,
    }
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    if args.checkpoint_dir is not None:
        settings = replace(settings, checkpoint_directory=args.checkpoint_dir)
    try:
        return asyncio.run(serve(system, settings, args.updates, args.status_interval_s))
    except KeyConfigError as exc:
        print(f"impala-learner: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "impala-learner",
        help="the V-trace learner: learns from actors' rewarded segments and publishes the "
        "policies Simic's validation gate passes (several ranks under torchrun)",
    )
    parser.add_argument("--redis-url", help="the bus's server (default: TAMIYO_REDIS_URL)")
    parser.add_argument("--data-dir", type=Path, help="the learner's state (ImpalaSettings)")
    parser.add_argument("--checkpoint-dir", type=Path, help="default: <data dir>/checkpoints")
    parser.add_argument("--updates", type=int, default=0, help="updates to run (0: forever)")
    parser.add_argument("--batch-segments", type=int, help="segments per update, per rank")
    parser.add_argument("--updates-per-publish", type=int, help="K: updates between candidates")
    parser.add_argument("--status-interval-s", type=float, default=10.0,
                        help="seconds between status lines")  # fmt: skip
    parser.set_defaults(run=run)
