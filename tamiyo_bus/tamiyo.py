"""One Tamiyo: the factory that assembles the step path, and the lifecycle of its parts.

    Urza (any BlueprintCatalog) -> CachedCatalog (deadline, cache) -> GraphBuilder (host)
    PolicyHolder (the running policy, swapped by signed PolicyUpdates)
    RiskGate (signals, breakers, conservative mode) <- StepGate (the step path's seam)
    StepController: evaluate_step -> worker (graph, policy) -> gate -> Ed25519 signature

The demo, the services, the benchmarks and the tests all build Tamiyo here, so they
run the same composition. ``build_tamiyo`` starts nothing and returns a ``Tamiyo``;
``start`` (or ``with``) runs its background workers, ``close`` stops them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import cast

import torch

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import BreakerName
from oona.breaker import CircuitBreaker
from oona.events import EventSink, LogEventSink
from oona.keys import Signer
from tamiyo_bus.decision_telemetry import DecisionTelemetry, TelemetrySink, telemetry_publisher
from tamiyo_bus.experience.recorder import ExperienceRecorder, TrajectorySink
from tamiyo_bus.experience.segments import ExperienceSettings
from tamiyo_bus.learning.reward import Progress
from tamiyo_bus.policy.baselines import NoOpPolicy, RandomPolicy
from tamiyo_bus.policy.features import NormalizerSettings, NormalizerSnapshot, RunningNormalizer
from tamiyo_bus.policy.graph import GraphBuilder
from tamiyo_bus.policy.heuristic import HeuristicPolicy
from tamiyo_bus.policy.profiles import PROFILES, Profile, default_profile
from tamiyo_bus.policy.reference import architecture_id
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.policy.serving import DecisionPolicy, ServingPolicy
from tamiyo_bus.policy.topology import HostTopology
from tamiyo_bus.risk.breakers import MetricsSink
from tamiyo_bus.risk.gate import RiskGate, RiskSettings
from tamiyo_bus.risk.step_gate import StepGate
from tamiyo_bus.security.commands import CommandSigner
from tamiyo_bus.security.policy_update import PolicyHolder, RunningPolicy
from tamiyo_bus.settings import StepSettings
from tamiyo_bus.step import StepController
from tamiyo_bus.urza_client import (
    BlueprintCatalog,
    BlueprintMetadata,
    CachedCatalog,
    CatalogSettings,
)
from tamiyo_bus.worker import QueueWorker

INITIAL_POLICY_ID = "tamiyo-initial"
BASELINE_FAMILY = "tamiyo-baseline"
CATALOG_PREFETCH_S = 10.0
WARM_UP_ROUNDS = 20
EXPERIENCE_FLUSH_S = 5.0  # close: longest wait for the last segments to be handed over
TELEMETRY_FLUSH_S = 1.0  # close: longest wait for the last decision records to go out


@dataclass(frozen=True)
class TamiyoSettings:
    """Everything Tamiyo's step path is configured by."""

    step: StepSettings = field(default_factory=StepSettings)
    risk: RiskSettings = field(default_factory=RiskSettings)
    catalog: CatalogSettings = field(default_factory=CatalogSettings)
    normalizer: NormalizerSettings = field(default_factory=NormalizerSettings)
    # decision records waiting for their background publisher; more drop the oldest
    telemetry_queue_size: int = 1024
    experience: ExperienceSettings = field(default_factory=ExperienceSettings)
    # How long a record handed off the step path (decision telemetry, feature
    # statistics, experience) may wait for its background thread, which takes them on
    # this period instead of being woken by each: a wake-up costs the trainer's thread
    # more than the hand-off. 0: wake the thread at every hand-off.
    handoff_linger_ms: float = 50.0


def initial_policy(
    device: torch.device | str, seed: int, profile: Profile | None = None
) -> PolicyHolder:
    """A freshly initialised policy (seeded) of ``profile`` (the device's default when
    None) at version 1; signed PolicyUpdates from the learner replace it as the run
    goes on."""
    device = torch.device(device)
    torch.manual_seed(seed)
    policy = ServingPolicy(PROFILES[profile or default_profile(device)], device=device)
    return PolicyHolder(
        RunningPolicy(policy, INITIAL_POLICY_ID, 1, architecture_id(policy), registry_digest())
    )


class Baseline(StrEnum):
    """The hand-written policies a run can use instead of the network."""

    HEURISTIC = "heuristic"
    RANDOM = "random"
    NONE = "none"


BASELINES: Mapping[Baseline, Callable[[], torch.nn.Module]] = {
    Baseline.HEURISTIC: HeuristicPolicy,
    Baseline.RANDOM: RandomPolicy,
    Baseline.NONE: NoOpPolicy,
}


def baseline_policy(baseline: Baseline) -> PolicyHolder:
    """A baseline on the step path at version 1. Its architecture id names it, so no
    PolicyUpdate (network weights) is ever accepted for it."""
    return PolicyHolder(
        RunningPolicy(
            BASELINES[baseline](),
            f"baseline-{baseline}",
            1,
            f"{BASELINE_FAMILY}/{baseline}",
            registry_digest(),
        )
    )


class Tamiyo:
    """The step path's controller and the parts a run reports on."""

    def __init__(
        self,
        controller: StepController,
        gate: StepGate,
        catalog: CachedCatalog,
        builder: GraphBuilder,
        holder: PolicyHolder,
        telemetry: QueueWorker[DecisionTelemetry] | None,
        experience: ExperienceRecorder | None = None,
    ) -> None:
        self.controller = controller
        self.gate = gate
        self.catalog = catalog
        self.builder = builder
        self.holder = holder
        self.telemetry = telemetry
        self.experience = experience

    @property
    def risk(self) -> RiskGate:
        return self.gate.gate

    def wants_state(self, step: int) -> bool:
        return self.controller.wants_state(step)

    def evaluate_step(self, packet: pb.SystemStatePacket) -> pb.AdaptationCommand | None:
        return self.controller.evaluate_step(packet)

    def end_run(self, packet: pb.SystemStatePacket) -> None:
        """The run ``packet`` belongs to ended in the state ``packet`` gives: the learner
        rewards the run's last decision by it (without waiting)."""
        if self.experience is not None:
            self.experience.end_run(packet.training_run_id, Progress.of_packet(packet))

    def start(self, *, prefetch_timeout_s: float = CATALOG_PREFETCH_S) -> Tamiyo:
        """Start the background workers (Urza lookups, inference, statistics, telemetry),
        waiting up to ``prefetch_timeout_s`` for the candidates' metadata."""
        self.catalog.start()
        self.catalog.prefetch(self.builder.candidates, timeout_s=prefetch_timeout_s)
        self.builder.normalizer.start()
        if self.telemetry is not None:
            self.telemetry.start()
        if self.experience is not None:
            self.experience.start()
        self.controller.start()
        return self

    def close(self) -> None:
        """Stop the background workers; each is joined for a bounded time only."""
        self.controller.close()
        if self.experience is not None:
            self.experience.close(EXPERIENCE_FLUSH_S)
        if self.telemetry is not None:
            self.telemetry.wait_idle(TELEMETRY_FLUSH_S)  # records lingering for their thread
            self.telemetry.close()
        self.builder.normalizer.close()
        self.catalog.close()

    def __enter__(self) -> Tamiyo:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait (off the step path) until no decision, telemetry record or statistics
        update is in flight; False if one still is after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        idle = self.controller.wait_idle(timeout_s)
        for worker in (self.telemetry, self.experience):
            if worker is not None:
                idle = worker.wait_idle(max(deadline - time.monotonic(), 0.0)) and idle
        return self.builder.normalizer.wait_idle(max(deadline - time.monotonic(), 0.0)) and idle

    def warm_up(self, packet: pb.SystemStatePacket, rounds: int = WARM_UP_ROUNDS) -> float:
        """Run graph build and inference on ``packet`` a few times before training, off
        the step path: first calls allocate and are several times slower, and a first
        step that misses its deadline would count against the inference breaker.

        Returns the median time of the second half of the rounds (ms): what a decision
        costs on this machine. The cadence starts from it, instead of deciding every step
        until the first decisions are measured.
        """
        metadata = self.catalog.resolve(self.builder.candidates, CATALOG_PREFETCH_S).metadata
        policy = cast(DecisionPolicy, self.holder.current().module)
        times_ms = []
        for _ in range(rounds):
            started = time.perf_counter()
            policy.decide(self.builder.build(packet, metadata))
            times_ms.append((time.perf_counter() - started) * 1000.0)
        cost_ms = statistics.median(times_ms[rounds // 2 :])
        self.controller.cadence.observe_decision(cost_ms)
        return cost_ms


def build_tamiyo(
    settings: TamiyoSettings,
    *,
    topology: HostTopology,
    blueprints: BlueprintCatalog,
    candidates: Sequence[str],
    signer: Signer,
    holder: PolicyHolder,
    seed: int = 0,
    normalizer: NormalizerSnapshot | None = None,
    telemetry: TelemetrySink | None = None,
    experience: TrajectorySink | None = None,
    events: EventSink | None = None,
    metrics: MetricsSink | None = None,
    adopted_breakers: Mapping[BreakerName, CircuitBreaker] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Tamiyo:
    """Tamiyo running ``holder``'s policy on ``topology``, choosing among ``candidates``
    of the ``blueprints`` library, with the risk gate and signing.

    ``telemetry`` receives a record per decision (off the step path); ``experience``
    receives the policy's decisions as Trajectory segments for the learner (when
    ``settings.experience.enabled``; off the step path); ``events`` and
    ``metrics`` receive the risk engine's events and its gauges and counters (the
    breaker states and conservative mode Nissa's alerts read). ``adopted_breakers``
    already guard a dependency (the IO breaker of the bus the run's telemetry and
    field reports travel on, the policy-update listener's): the risk gate adopts them,
    so a server outage or a run of rejected PolicyUpdates puts the run in conservative
    mode. Nothing runs until ``start``.
    """
    step = settings.step
    catalog = CachedCatalog(
        blueprints,
        deadline_ms=step.urza_deadline_ms,
        ttl_s=settings.catalog.ttl_s,
        max_stale_s=settings.catalog.max_stale_s,
        clock=clock,
    )
    features = RunningNormalizer(
        update=settings.normalizer.update,
        queue_size=settings.normalizer.queue_size,
        linger_ms=settings.handoff_linger_ms,
    )
    if normalizer is not None:
        features.load(normalizer)
    builder = GraphBuilder(topology, candidates, features)

    def cached(ids: Sequence[str]) -> dict[str, BlueprintMetadata]:
        return dict(catalog.resolve(ids, 0.0).metadata)

    risk = RiskGate(settings.risk, events or LogEventSink(), clock=clock, metrics=metrics)
    for name, breaker in (adopted_breakers or {}).items():
        risk.breakers.adopt(name, breaker)
    gate = StepGate(risk, cached)
    publisher = (
        telemetry_publisher(
            telemetry,
            queue_size=settings.telemetry_queue_size,
            linger_ms=settings.handoff_linger_ms,
        )
        if telemetry is not None
        else None
    )
    recorder = (
        ExperienceRecorder(
            settings.experience,
            experience,
            actor_id=step.issued_by,
            publishing_allowed=lambda: risk.conservative.impala_publishing_enabled,
            clock=clock,
            linger_ms=settings.handoff_linger_ms,
        )
        if experience is not None and settings.experience.enabled
        else None
    )
    controller = StepController(
        policy=holder,
        builder=builder,
        catalog=catalog,
        signer=CommandSigner(signer),
        settings=step,
        telemetry=publisher,
        experience=recorder,
        gate=gate,
        generator=torch.Generator().manual_seed(seed),
    )
    return Tamiyo(controller, gate, catalog, builder, holder, publisher, recorder)
