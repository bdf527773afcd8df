"""Putting a morphogenetic run together: Urza, Tamiyo, Kasmina and Tolaria in-process.

One place builds the whole step path, so the demo, the overhead benchmark and the
integration tests run exactly the same composition:

    Urza store -> CachedCatalog (deadline, cache) -> GraphBuilder (host topology)
    ServingPolicy -> PolicyHolder -> StepController (deadline, risk gate, signing)
    the async side's bus IO breaker -> the risk gate's BUS_IO breaker (one breaker)
    CommandVerifier (trusted keys) -> Kasmina (seed sites of the host) <- LRController
    Tolaria (host model, dataset, optimiser) calls all of it every step
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from leyline_pb import leyline_pb2 as pb
from oona.breaker import CircuitBreaker
from oona.events import EventSink, LogEventSink
from oona.keys import Keyring, Signer
from tamiyo_bus.decision_telemetry import TelemetryPublisher
from tamiyo_bus.kasmina.executor import Kasmina
from tamiyo_bus.kasmina.settings import KasminaSettings
from tamiyo_bus.policy.features import RunningNormalizer
from tamiyo_bus.policy.graph import GraphBuilder
from tamiyo_bus.policy.reference import architecture_id
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.policy.topology import HostTopology
from tamiyo_bus.risk import BreakerName, RiskGate, RiskSettings, RiskStage
from tamiyo_bus.risk.step_gate import RiskCommandGate
from tamiyo_bus.security.commands import CommandSigner, CommandVerifier
from tamiyo_bus.security.policy_update import PolicyHolder, RunningPolicy
from tamiyo_bus.settings import StepSettings
from tamiyo_bus.step import StepController
from tamiyo_bus.tolaria.data import Dataset, load
from tamiyo_bus.tolaria.lr import LRController, LRSettings
from tamiyo_bus.tolaria.models import HostModel, build_host, host_topology
from tamiyo_bus.tolaria.trainer import Tolaria, TolariaSettings, TrainingObserver
from tamiyo_bus.urza.store import UrzaStore
from tamiyo_bus.urza_client import BlueprintMetadata, CachedCatalog

INITIAL_POLICY_ID = "tamiyo-initial"
CATALOG_PREFETCH_S = 10.0
WARM_UP_ROUNDS = 20


@dataclass(frozen=True)
class RunSpec:
    """What to train and how; the demo's flags map onto these fields."""

    dataset: str = "digits"
    model: str = "mlp"
    width: int = 64
    depth: int = 3
    epochs: int = 20
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"  # auto: CUDA when available, else CPU
    base_lr: float = 3e-3
    decision_every_steps: int = 1
    step: StepSettings = field(default_factory=StepSettings)
    kasmina: KasminaSettings = field(default_factory=KasminaSettings)
    risk: RiskSettings = field(default_factory=RiskSettings)

    def steps_per_epoch(self, data: Dataset) -> int:
        return len(data.train_x) // self.batch_size


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def candidate_blueprints(store: UrzaStore, topology: HostTopology) -> tuple[str, ...]:
    """Every library entry that fits a layer of this host, quarantined ones included: the
    policy sees them and its masks keep it from choosing them."""
    kinds = {layer.kind for layer in topology.layers}
    return tuple(b.blueprint_id for b in store.list() if any(k in kinds for k in b.layer_kinds))


def initial_policy(device: torch.device, seed: int) -> PolicyHolder:
    """A freshly initialised policy (seeded) at version 1; signed PolicyUpdates from the
    learner replace it while the run goes on."""
    torch.manual_seed(seed)
    policy = ServingPolicy(device=device)
    return PolicyHolder(
        RunningPolicy(policy, INITIAL_POLICY_ID, 1, architecture_id(policy), registry_digest())
    )


@dataclass
class Tamiyo:
    """The step path's controller and the parts a run reports on."""

    controller: StepController
    risk: RiskCommandGate
    catalog: CachedCatalog
    builder: GraphBuilder
    policy: ServingPolicy

    def warm_up(self, packet: pb.SystemStatePacket, rounds: int = WARM_UP_ROUNDS) -> float:
        """Run graph build and inference on ``packet`` a few times before training, off
        the step path: first calls allocate and are several times slower, and a first
        step that misses its deadline would count against the inference breaker.

        Returns the median time of the second half of the rounds (ms): what a decision
        costs on this machine, to compare with the step deadline before training.
        """
        metadata = self.catalog.resolve(self.builder.candidates, CATALOG_PREFETCH_S).metadata
        times_ms = []
        for _ in range(rounds):
            started = time.perf_counter()
            self.policy.decide(self.builder.build(packet, metadata))
            times_ms.append((time.perf_counter() - started) * 1000.0)
        return statistics.median(times_ms[rounds // 2 :])


def build_tamiyo(
    *,
    topology: HostTopology,
    store: UrzaStore,
    signer: Signer,
    settings: StepSettings,
    risk: RiskSettings,
    holder: PolicyHolder,
    seed: int,
    telemetry: TelemetryPublisher | None = None,
    events: EventSink | None = None,
    adopted_breakers: Mapping[BreakerName, CircuitBreaker] | None = None,
) -> Tamiyo:
    """Tamiyo running ``holder``'s policy, with the risk gate and signing.

    ``adopted_breakers`` are breakers that already guard a dependency (the IO breaker
    of the bus the run's telemetry and field reports travel on, the policy-update
    listener's): the risk gate adopts them, so a server outage or a run of rejected
    PolicyUpdates that opens one puts the run in conservative mode (and its recovery
    is seen the same way).
    """
    catalog = CachedCatalog(
        store,
        deadline_ms=settings.urza_deadline_ms,
        ttl_s=settings.urza_cache_ttl_s,
        max_stale_s=settings.urza_max_stale_s,
    )
    candidates = candidate_blueprints(store, topology)
    catalog.prefetch(candidates, timeout_s=CATALOG_PREFETCH_S)
    builder = GraphBuilder(
        topology,
        candidates,
        RunningNormalizer(
            update=settings.normalizer_update, queue_size=settings.normalizer_queue_size
        ),
    )
    policy = holder.current().module
    assert isinstance(policy, ServingPolicy)

    def blueprints(ids: Sequence[str]) -> dict[str, BlueprintMetadata]:
        return dict(catalog.resolve(ids, 0.0).metadata)

    gate = RiskCommandGate(RiskStage(RiskGate(risk, events or LogEventSink())), blueprints)
    for name, breaker in (adopted_breakers or {}).items():
        gate.stage.gate.breakers.adopt(name, breaker)
    controller = StepController(
        policy=holder,
        builder=builder,
        catalog=catalog,
        signer=CommandSigner(signer),
        settings=settings,
        telemetry=telemetry,
        gate=gate,
        generator=torch.Generator().manual_seed(seed),
    )
    return Tamiyo(controller, gate, catalog, builder, policy)


@dataclass
class Run:
    """Every part of one assembled run."""

    spec: RunSpec
    run_id: str
    device: torch.device
    data: Dataset
    model: HostModel
    topology: HostTopology
    lr: LRController
    kasmina: Kasmina
    tamiyo: Tamiyo
    trainer: Tolaria
    warm_decision_ms: float  # graph build + inference, median after warm-up

    @property
    def host_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_model(spec: RunSpec, data: Dataset, device: torch.device) -> HostModel:
    torch.manual_seed(spec.seed)
    return build_host(
        spec.model,
        features=data.features,
        classes=data.classes,
        image_shape=data.image_shape,
        width=spec.width,
        depth=spec.depth,
    ).to(device)


def assemble(
    spec: RunSpec,
    *,
    run_id: str,
    signer: Signer,
    keyring: Keyring,
    store: UrzaStore,
    observers: Sequence[TrainingObserver] = (),
    holder: PolicyHolder | None = None,
    telemetry: TelemetryPublisher | None = None,
    events: EventSink | None = None,
    adopted_breakers: Mapping[BreakerName, CircuitBreaker] | None = None,
) -> Run:
    """The whole in-process step path for ``spec``; nothing has run yet. Without
    ``holder`` Tamiyo starts from ``initial_policy``."""
    device = resolve_device(spec.device)
    data = load(spec.dataset, spec.seed).to(device)
    model = build_model(spec, data, device)
    topology = host_topology(model)
    total_steps = spec.epochs * spec.steps_per_epoch(data)
    lr = LRController(
        LRSettings(base_lr=spec.base_lr, warmup_steps=min(100, total_steps // 10),
                   total_steps=total_steps)
    )  # fmt: skip
    kasmina = Kasmina(
        model.sites,
        blueprints=store,
        verifier=CommandVerifier(keyring, events=events),
        learning_rates=lr,
        host_parameters=sum(p.numel() for p in model.parameters()),
        training_run_id=run_id,
        device=device,
        settings=spec.kasmina,
    )
    tamiyo = build_tamiyo(
        topology=topology, store=store, signer=signer, settings=spec.step, risk=spec.risk,
        holder=holder or initial_policy(device, spec.seed), seed=spec.seed,
        telemetry=telemetry, events=events, adopted_breakers=adopted_breakers,
    )  # fmt: skip
    trainer = Tolaria(
        model,
        data,
        TolariaSettings(
            epochs=spec.epochs,
            batch_size=spec.batch_size,
            decision_every_steps=spec.decision_every_steps,
            seed=spec.seed,
        ),
        lr=lr,
        training_run_id=run_id,
        kasmina=kasmina,
        controller=tamiyo.controller,
        observers=observers,
    )
    decision_ms = tamiyo.warm_up(trainer.state_packet())
    return Run(
        spec, run_id, device, data, model, topology, lr, kasmina, tamiyo, trainer, decision_ms
    )
