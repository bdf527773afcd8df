"""`tamiyo-bus trainer`: training runs of the demo's host on a deployment's bus.

Runs follow one another (``--runs``; 0: until SIGTERM or SIGINT, which let the current
run finish). Tamiyo decides with the newest policy Simic's learner published: the
policy listener applies each update as it comes, within a run or between runs. The
deployment's Weatherlight (`serve`) runs the hub, Nissa and Simic; this process signs
with its own roles' keys only, from ``--keys DIR`` (``private/tamiyo.key``,
``private/tolaria.key``, ``private/kasmina.key`` and the trust directory ``trusted/``;
docs/operations.md), and joins the server TAMIYO_REDIS_URL names. Its field-report log
and the record of the policy versions it applied live under ``--data-dir``; a restarted
trainer delivers what the log still holds.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import FrameType

from leyline_vocab.telemetry import SOURCE_KASMINA, SOURCE_TAMIYO, SOURCE_TOLARIA
from oona.keyfiles import KeyConfigError
from tamiyo_bus import initial_policy
from weatherlight.demo.assembly import RunSpec, resolve_device
from weatherlight.demo.session import Session
from weatherlight.role_keys import RoleKeys
from weatherlight.settings import SystemSettings

EXIT_CONFIG_ERROR = 2
TRAINER_ROLES = (SOURCE_TAMIYO, SOURCE_TOLARIA, SOURCE_KASMINA)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `trainer` to the CLI."""
    parser = commands.add_parser(
        "trainer", help="training runs with Tamiyo on a deployment's bus (docker-compose)"
    )
    parser.add_argument("--runs", type=int, default=0, help="runs to train (0: until stopped)")
    parser.add_argument("--epochs", type=int, default=RunSpec().epochs, help="epochs per run")
    parser.add_argument("--seed", type=int, default=0, help="run i trains with seed + i")
    parser.add_argument("--keys", type=Path, required=True, help="the key directory")
    parser.add_argument(
        "--instance", default=socket.gethostname(),
        help="this trainer's name: run ids and its policy-update group derive from it",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".tamiyo") / "trainer",
        help="the field-report log and the policy version record",
    )  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    system = SystemSettings.from_env()
    try:
        keys = RoleKeys.load_signing(args.keys, TRAINER_ROLES)
    except (KeyConfigError, OSError, ValueError) as exc:
        print(f"trainer: keys under {args.keys}: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    spec = replace(RunSpec(), epochs=args.epochs, seed=args.seed)
    holder = initial_policy(resolve_device(spec.device), spec.seed, spec.profile)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        print("trainer: stopping after this run", flush=True)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    try:
        session = Session.attach(
            args.data_dir / args.instance, keys=keys, instance=args.instance, holder=holder,
            spec=spec, system=system,
        )  # fmt: skip
    except ValueError as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    with session:
        print(f"trainer {args.instance}: on {system.oona.redis_url}", flush=True)
        index = 0
        while not stopping.is_set() and (args.runs == 0 or index < args.runs):
            run_spec = replace(spec, seed=args.seed + index)
            version = holder.current().version
            result = session.run(run_spec, f"{args.instance}-{index:05d}", holder=holder)
            last = result.recorder.epochs[-1] if result.recorder.epochs else None
            accuracy = f"{last.val_accuracy:.2%}" if last else "-"
            print(
                f"trainer {args.instance}: run {index + 1} with policy v{version} "
                f"(now v{holder.current().version}): val acc {accuracy}, "
                f"{len(result.run.kasmina.history)} seed transitions",
                flush=True,
            )
            index += 1
    return 0
