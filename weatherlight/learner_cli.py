"""`tamiyo-bus learner`: Simic's learner on its own, until SIGTERM or SIGINT.

The process's own key (TAMIYO_SIGNING_KEY_FILE) must be Simic's: it signs the policies
and the learner's telemetry. Settings come from the tree (docs/configuration.md,
`LearnerSettings`; its state under `$TAMIYO_DATA_DIR/simic/learner/`); every
`--health-interval-s` a line says what the learner waits for. Under `tamiyo-bus serve`
the same learner runs as one of Weatherlight's services instead.
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

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.roles import SIMIC
from oona.events import LogEventSink
from oona.keyfiles import KeyConfigError
from oona.keys import Keyring, Signer
from producers.sinks import TelemetryEventSink
from producers.telemetry import TelemetryProducer
from tamiyo_bus.simic.settings import LearnerSettings
from weatherlight.learner import learner_on_bus
from weatherlight.role_keys import load_own_keys
from weatherlight.settings import ENV_LEARNER, SystemSettings

EXIT_CONFIG_ERROR = 2


class _Events:
    """Logged, and published as the learner's telemetry once its producer runs."""

    def __init__(self) -> None:
        self.log = LogEventSink()
        self.telemetry: TelemetryEventSink | None = None

    def attach(self, producer: TelemetryProducer) -> None:
        self.telemetry = TelemetryEventSink(producer)

    def emit(self, event: pb.TelemetryEvent) -> None:
        self.log.emit(event)
        if self.telemetry is not None:
            self.telemetry.emit(event)


async def serve(
    system: SystemSettings,
    settings: LearnerSettings,
    signer: Signer,
    keyring: Keyring,
    health_interval_s: float,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    events = _Events()
    async with learner_on_bus(system.oona, keyring, signer, settings, events=events) as (
        service,
        producer,
    ):
        events.attach(producer)
        print(f"learner: running (key {signer.key_id}, state in {settings.data_dir})", flush=True)
        task = asyncio.create_task(service.run(stop))
        while not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout=health_interval_s)
            print(f"learner: {json.dumps(service.health())}", flush=True)
        await task
    print("learner: stopped", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    system = SystemSettings.from_env()
    settings = system.weatherlight.learner
    if settings is None:
        print(f"learner: turned off ({ENV_LEARNER})", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.start_checkpoint is not None:
        settings = replace(settings, start_checkpoint=args.start_checkpoint)
    try:
        signer, keyring = load_own_keys(system.keys, SIMIC)
    except KeyConfigError as exc:
        print(f"learner: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return asyncio.run(serve(system, settings, signer, keyring, args.health_interval_s))


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "learner",
        help="Simic's learner alone: joins Tamiyo's experience with the field reports, "
        "trains, and publishes the policies its validation gate passes",
    )
    parser.add_argument(
        "--start-checkpoint", type=Path, help="start weights (a policy checkpoint) on a first start"
    )
    parser.add_argument("--health-interval-s", type=float, default=60.0,
                        help="seconds between status lines")  # fmt: skip
    parser.set_defaults(run=run)
