"""`tamiyo-bus actor`: one IMPALA actor, until SIGTERM or SIGINT or `--episodes`.

It plays the simulator with the policy it last received, publishes rewarded segments
on the trajectories stream and applies the learner's signed PolicyUpdates from the
policy stream (group ``actor.<id>``). The process's own key (TAMIYO_SIGNING_KEY_FILE)
must be Tamiyo's: only her role may publish trajectories. The server and the trusted
keys come from the settings tree (docs/configuration.md); each episode prints one line
of progress (docs/operations.md, "Running actors").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from dataclasses import replace

from leyline_vocab.roles import TAMIYO
from leyline_vocab.telemetry import SOURCE_TAMIYO
from oona.bus import Bus
from oona.keyfiles import KeyConfigError
from oona.keys import Keyring, Signer
from tamiyo_bus.actors.loop import ActorLoop, ActorProgress
from tamiyo_bus.actors.settings import ActorLoopSettings
from tamiyo_bus.policy.profiles import Profile
from tamiyo_bus.sim.actor import ActorSettings
from weatherlight.role_keys import load_own_keys
from weatherlight.settings import SystemSettings

EXIT_CONFIG_ERROR = 2


def settings_from(args: argparse.Namespace) -> ActorLoopSettings:
    base = ActorLoopSettings()
    play = base.play
    sim = replace(
        play.sim,
        epochs=args.epochs or play.sim.epochs,
        steps_per_epoch=args.steps_per_epoch or play.sim.steps_per_epoch,
    )
    experience = replace(
        play.experience,
        segment_max_steps=args.unroll_steps,
        publish_queue_max_segments=args.queue_segments,
    )
    return replace(
        base,
        actor_id=args.actor_id,
        play=ActorSettings(runs=args.runs, seed=args.seed, sim=sim, experience=experience),
        profile=Profile(args.profile),
        policy_seed=args.policy_seed,
        backpressure_resume_segments=args.backpressure_resume_segments,
        backpressure_wait_s=args.backpressure_wait_s,
    )


def _print(progress: ActorProgress, state: str = "") -> None:
    label = f"actor {progress.actor_id}{': ' + state if state else ''}"
    print(f"{label}: {json.dumps(progress.as_dict())}", flush=True)


async def serve(
    system: SystemSettings,
    settings: ActorLoopSettings,
    signer: Signer,
    keyring: Keyring,
    episodes: int,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bus = Bus.connect(system.oona, signer, source=SOURCE_TAMIYO)
    try:
        actor = ActorLoop(bus, keyring, settings)
        print(f"actor {settings.actor_id}: running (key {signer.key_id})", flush=True)
        progress = await actor.run(stop, episodes=episodes, on_episode=_print)
    finally:
        await bus.close()
    _print(progress, "stopped")
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    system = SystemSettings.from_env()
    try:
        settings = settings_from(args)
        signer, keyring = load_own_keys(system.keys, TAMIYO)
    except (KeyConfigError, ValueError) as exc:
        print(f"actor: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return asyncio.run(serve(system, settings, signer, keyring, args.episodes))


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "actor",
        help="one IMPALA actor: plays the simulator with the learner's latest policy and "
        "publishes rewarded trajectory segments",
    )
    add = parser.add_argument
    add("--actor-id", default="actor-1", help="this actor's name (its policy group, its segments)")
    add("--seed", type=int, default=0, help="the simulated runs' seed (one per actor)")
    add("--policy-seed", type=int, default=0, help="the start policy's seed (the learner's)")
    add("--profile", choices=[p.value for p in Profile], default=Profile.SMALL.value)
    add("--episodes", type=int, default=0, help="stop after this many episodes (0: until stopped)")
    add("--runs", type=int, default=4, help="simulated runs played side by side")
    add("--unroll-steps", type=int, default=20, help="decisions per segment at most")
    queue_default = ActorSettings().experience.publish_queue_max_segments
    add("--queue-segments", type=int, default=queue_default,
        help="segments held while the stream is full (past it, the oldest are shed)")  # fmt: skip
    add("--epochs", type=int, default=0, help="a simulated run's epochs (0: the default)")
    add("--steps-per-epoch", type=int, default=0, help="optimiser steps an epoch (0: the default)")
    loop_defaults = ActorLoopSettings()
    add(
        "--backpressure-resume-segments",
        type=int,
        default=loop_defaults.backpressure_resume_segments,
        help="play the next episode once at most this many segments are queued",
    )
    add("--backpressure-wait-s", type=float, default=loop_defaults.backpressure_wait_s,
        help="how long to wait for the queue to drain before playing on")  # fmt: skip
    parser.set_defaults(run=run)
