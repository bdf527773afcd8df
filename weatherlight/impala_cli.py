"""`tamiyo-bus impala-learner`: the V-trace learner, one process or one rank of several.

Under torchrun (`torchrun --nproc-per-node 2 -m weatherlight.cli impala-learner ...`)
each rank reads RANK, WORLD_SIZE and LOCAL_RANK from its environment, consumes its own
share of the trajectories stream (consumer `<consumer>-rank<r>` of group
`impala-learner`), and the lead rank gates, publishes, checkpoints and sends the
telemetry. The process's key (TAMIYO_SIGNING_KEY_FILE) must be Simic's, as for
`tamiyo-bus learner`; the ranks share one server (TAMIYO_REDIS_URL or `--redis-url`).
Runs until `--updates` updates (0: until SIGTERM or SIGINT, to any rank: the ranks
stop together and exit 0); every `--status-interval-s` a line gives its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from leyline_vocab.roles import SIMIC
from oona.keyfiles import KeyConfigError
from tamiyo_bus.impala.distributed import (
    RankInfo,
    join_process_group,
    learner_device,
    leave_process_group,
)
from tamiyo_bus.impala.settings import ImpalaSettings
from weatherlight.impala_learner import impala_on_bus
from weatherlight.learner_cli import EXIT_CONFIG_ERROR
from weatherlight.role_keys import load_own_keys
from weatherlight.settings import SystemSettings


def say(line: str) -> None:
    """One line in one write: the ranks under torchrun share one output, and a line
    written at once (under the pipe's atomic size) is never cut by another rank's."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def serve(
    system: SystemSettings, settings: ImpalaSettings, updates: int, status_interval_s: float
) -> int:
    rank = RankInfo.from_env()
    signer, keyring = load_own_keys(system.keys, SIMIC)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await asyncio.to_thread(join_process_group, rank)
    device = learner_device(rank)
    name = f"impala-learner[{rank.rank}/{rank.world_size}]"
    try:
        async with impala_on_bus(
            system.oona, keyring, signer, settings, rank=rank, device=device
        ) as service:
            learner = service.learner
            say(f"{name}: pid {os.getpid()}, running from update {learner.progress.updates}")
            task = asyncio.create_task(service.run(stop))
            while not task.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), timeout=status_interval_s)
                if updates and learner.progress.updates >= updates:
                    stop.set()
                say(f"{name}: {json.dumps(service.health())}")
            await task
    finally:
        await asyncio.to_thread(leave_process_group)
    say(f"{name}: stopped")
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    system = SystemSettings.from_env()
    if args.redis_url:
        system = replace(system, oona=replace(system.oona, redis_url=args.redis_url))
    if args.key_prefix:
        system = replace(system, oona=replace(system.oona, key_prefix=args.key_prefix))
    settings = learner_settings(system.impala, args)
    try:
        return asyncio.run(serve(system, settings, args.updates, args.status_interval_s))
    except KeyConfigError as exc:
        print(f"impala-learner: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def learner_settings(base: ImpalaSettings, args: argparse.Namespace) -> ImpalaSettings:
    """``base`` with the command's flags applied."""
    overrides: dict[str, object] = {
        "batch_segments": args.batch_segments,
        "buffer_max_segments": args.buffer_max_segments,
        "base_lr": args.base_lr,
        "updates_per_publish": args.updates_per_publish,
        "checkpoint_every_updates": args.checkpoint_every_updates,
        "held_out_fraction": args.held_out_fraction,
        "starved_wait_s": args.starved_wait_s,
        "data_dir": args.data_dir,
        "checkpoint_directory": args.checkpoint_dir,
    }
    settings = replace(base, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    gate = settings.gate
    if args.min_held_out_decisions is not None:
        gate = replace(gate, min_held_out_decisions=args.min_held_out_decisions)
    if args.max_kl is not None:
        gate = replace(gate, max_kl=args.max_kl)
    if args.value_error_tolerance is not None:
        gate = replace(gate, value_error_tolerance=args.value_error_tolerance)
    if args.gate_sim_runs is not None:
        gate = (
            replace(gate, sim_evaluation=False)
            if args.gate_sim_runs == 0
            else replace(gate, sim_evaluation=True, sim_runs=args.gate_sim_runs)
        )
    return replace(settings, gate=gate)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "impala-learner",
        help="the V-trace learner: learns from actors' rewarded segments and publishes the "
        "policies Simic's validation gate passes (several ranks under torchrun)",
    )
    parser.add_argument("--redis-url", help="the bus's server (default: TAMIYO_REDIS_URL)")
    parser.add_argument("--key-prefix", help="the bus's key prefix (default: tamiyo)")
    parser.add_argument("--data-dir", type=Path, help="the learner's state (ImpalaSettings)")
    parser.add_argument("--checkpoint-dir", type=Path, help="default: <data dir>/checkpoints")
    parser.add_argument("--updates", type=int, default=0, help="updates to run (0: forever)")
    parser.add_argument("--batch-segments", type=int, help="segments per update, per rank")
    parser.add_argument("--buffer-max-segments", type=int,
                        help="acked segments waiting per rank (adds to the lag)")  # fmt: skip
    parser.add_argument("--updates-per-publish", type=int, help="K: updates between candidates")
    parser.add_argument("--base-lr", type=float, help="Adam's (constant) learning rate")
    parser.add_argument("--checkpoint-every-updates", type=int, help="0: never")
    parser.add_argument("--held-out-fraction", type=float, help="of segments, the gate's data")
    parser.add_argument("--min-held-out-decisions", type=int,
                        help="the gate judges from at least these")  # fmt: skip
    parser.add_argument("--max-kl", type=float,
                        help="the gate's bound on KL(running || candidate), nats")  # fmt: skip
    parser.add_argument("--value-error-tolerance", type=float,
                        help="the gate's allowed relative rise in value error")  # fmt: skip
    parser.add_argument("--gate-sim-runs", type=int,
                        help="the gate's simulated runs per policy (0: none)")  # fmt: skip
    parser.add_argument("--starved-wait-s", type=float,
                        help="how long the ranks wait for a starved one")  # fmt: skip
    parser.add_argument("--status-interval-s", type=float, default=10.0,
                        help="seconds between status lines")  # fmt: skip
    parser.set_defaults(run=run)
