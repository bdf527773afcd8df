"""The `tamiyo-bus` command. Each subcommand lives in its own module and registers
itself here, so this file stays a table of contents."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from weatherlight import (
    actor_cli,
    exporter_cli,
    impala_cli,
    keys_cli,
    learner_cli,
    reports_cli,
    selfcheck,
    serve,
    trainer_cli,
    urza_cli,
)
from weatherlight.demo import cli as demo_cli
from weatherlight.demo import drain as demo_drain
from weatherlight.training import cli as train_cli

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

SUBCOMMANDS: tuple[Register, ...] = (
    demo_cli.register,
    demo_drain.register,
    selfcheck.register,
    exporter_cli.register,
    keys_cli.register,
    serve.register,
    learner_cli.register,
    impala_cli.register,
    urza_cli.register,
    reports_cli.register,
    train_cli.register,
    trainer_cli.register,
    actor_cli.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tamiyo-bus",
        description="Tamiyo, the strategic controller of morphogenetic training, on Redis Streams.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
