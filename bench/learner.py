"""Simic's learner: how fast it joins field experience and how long an update takes.

Simulated runs of the default profile's policy are published as a Tamiyo publishes its
experience (trajectory segments and field reports, signed by a Tamiyo key) on the
embedded server (or TAMIYO_REDIS_URL). Then, timed:

(a) intake: the learner's consumer reads both streams into its SQLite store (every
    entry verified, checked and stored durably before it is acked), decisions/s;
(b) join: pending decisions joined with their successors and reports, decisions/s;
    (a) and (b) together give the joined decisions/s from the bus;
(c) one PPO update per 256 fresh decisions (values recomputed, chained GAE, the
    learner's PPO settings), without and then with a replay sample of 256;
(d) the validation gate on the held-out decisions and the seeded simulated runs.

Prints a table; with --json, one final JSON line with the figures, sizes and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import orjson
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bus_server, machine
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus, Outgoing
from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.policy.features import RunningNormalizer
from tamiyo_bus.policy.profiles import PROFILES
from tamiyo_bus.policy.reference import ReferencePolicy, architecture_id
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.sim.env import VectorSim
from tamiyo_bus.sim.rollout import graph_builder, run_episode
from tamiyo_bus.simic.intake import ExperienceIntake
from tamiyo_bus.simic.learner import SimicLearner
from tamiyo_bus.simic.settings import LearnerSettings
from tamiyo_bus.simic.simulated import SimulatedExperience, episode_experience
from tamiyo_bus.simic.store import ExperienceStore
from weatherlight.role_keys import RoleKeys

BATCH = 256


def experience(settings: LearnerSettings, runs: int, seed: int) -> SimulatedExperience:
    torch.manual_seed(settings.seed)
    policy = ReferencePolicy(PROFILES[settings.profile])
    actor = ServingPolicy(policy.config)
    actor.load_state_dict(policy.state_dict())
    sim = VectorSim(runs=runs, seed=seed)
    episodes = run_episode(
        sim,
        [actor] * runs,
        graph_builder(sim, RunningNormalizer(update=False)),
        generator=torch.Generator().manual_seed(seed),
    )
    return episode_experience(episodes, architecture_id=architecture_id(policy), policy_version=1)


async def publish(bus: Bus, played: SimulatedExperience) -> None:
    messages = [
        Outgoing(pb.MESSAGE_TYPE_TRAJECTORY, s.SerializeToString(), stream=Stream.TRAJECTORIES)
        for s in played.segments
    ] + [
        Outgoing(pb.MESSAGE_TYPE_FIELD_REPORT, r.SerializeToString(), stream=Stream.FIELD_REPORTS)
        for r in played.reports
    ]
    for start in range(0, len(messages), 64):
        await bus.publish_many(messages[start : start + 64], batch_signed=False)


async def intake_rate(oona: OonaSettings, keys: RoleKeys, store: ExperienceStore,
                      played: SimulatedExperience) -> float:  # fmt: skip
    tamiyo = Bus.connect(oona, keys.signer("tamiyo"), source="tamiyo")
    simic = Bus.connect(oona, keys.signer("simic"), source="simic")
    await publish(tamiyo, played)
    intake = ExperienceIntake(simic, keys.keyring, store, group="simic-learner",
                              consumer="bench", held_out_fraction=0.1,
                              max_age_ms=3_600_000.0)  # fmt: skip
    started = time.perf_counter()
    await intake.drain()
    elapsed = time.perf_counter() - started
    await tamiyo.close()
    await simic.close()
    return store.counts()["decisions_stored"] / elapsed


def update_times(learner: SimicLearner, count: int) -> list[float]:
    times = []
    for _ in range(count):
        batch = learner.store.complete_decisions(BATCH)
        if len(batch) < BATCH:
            break
        started = time.perf_counter()
        learner.update(batch)
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=int, default=8, help="simulated runs (300 decisions each)")
    parser.add_argument("--updates", type=int, default=3, help="timed updates per case")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-learner-"))
    settings = replace(LearnerSettings(data_dir=data_dir), replay_sample_decisions=0)
    played = experience(settings, args.runs, seed=0)
    store = ExperienceStore(settings.store_path)
    keys = RoleKeys.generate()
    with bus_server() as (url, server_name, _):
        oona = OonaSettings(redis_url=url, key_prefix=f"bench-learner-{time.time_ns()}")
        intake_per_s = asyncio.run(intake_rate(oona, keys, store, played))
    torch.manual_seed(settings.seed)
    learner = SimicLearner(settings, store, ReferencePolicy(PROFILES[settings.profile]))
    started = time.perf_counter()
    learner.join(time.time())
    join_s = time.perf_counter() - started
    joined = store.counts()["joined"]
    join_per_s = joined / join_s
    joined_per_s = 1.0 / (1.0 / intake_per_s + 1.0 / join_per_s)
    fresh = update_times(learner, args.updates)
    learner.settings = replace(settings, replay_sample_decisions=BATCH)
    replayed = update_times(learner, args.updates)
    started = time.perf_counter()
    verdict, _ = learner.propose()
    gate_s = time.perf_counter() - started

    def figures(times: list[float]) -> dict[str, float]:
        return {"p50_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
                "updates": len(times)}  # fmt: skip

    print(f"learner, profile {settings.profile}, {joined} decisions of {args.runs} simulated "
          f"runs, server {server_name}")  # fmt: skip
    print(f"(a) intake from the bus      {intake_per_s:>10,.0f} decisions/s")
    print(f"(b) join                     {join_per_s:>10,.0f} decisions/s")
    print(f"    joined from the bus      {joined_per_s:>10,.0f} decisions/s")
    print(f"(c) update, 256 fresh        {figures(fresh)['p50_s']:>10} s (p50)")
    print(f"    update, 256 + 256 replay {figures(replayed)['p50_s']:>10} s (p50)")
    print(f"(d) gate                     {gate_s:>10.2f} s ({verdict})")
    if args.json:
        line = {
            "bench": "learner",
            "intake_decisions_per_s": round(intake_per_s),
            "join_decisions_per_s": round(join_per_s),
            "joined_decisions_per_s": round(joined_per_s),
            "update_256_fresh": figures(fresh),
            "update_256_fresh_256_replay": figures(replayed),
            "gate_s": round(gate_s, 2),
            "sizes": {
                "decisions": joined,
                "segments": len(played.segments),
                "reports": len(played.reports),
                "profile": str(settings.profile),
                "ppo": asdict(settings.ppo),
                "gate_sim_runs": settings.gate.sim_runs,
            },
            "machine": machine(threads=args.threads, torch=torch.__version__),
        }
        print(orjson.dumps(line, default=str).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
