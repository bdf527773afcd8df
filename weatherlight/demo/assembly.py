"""Putting a morphogenetic run together: Urza, Tamiyo, Kasmina and Tolaria in-process.

One place builds the whole run, so the demo, the overhead benchmark and the
integration tests run exactly the same composition:

    Urza store -> tamiyo_bus.build_tamiyo (policy, cache, risk gate, signing)
    the async side's bus IO breaker -> the risk gate's BUS_IO breaker (one breaker)
    CommandVerifier (trusted keys) -> Kasmina (seed sites of the host) <- LRController
    Tolaria (host model, dataset, optimiser) calls all of it every step
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from leyline_vocab.events import BreakerName
from oona.breaker import CircuitBreaker
from oona.events import EventSink
from oona.keys import Keyring, Signer
from tamiyo_bus import Tamiyo, TamiyoSettings, build_tamiyo, initial_policy
from tamiyo_bus.decision_telemetry import TelemetrySink
from tamiyo_bus.experience.recorder import TrajectorySink
from tamiyo_bus.kasmina.executor import Kasmina
from tamiyo_bus.kasmina.settings import KasminaSettings
from tamiyo_bus.policy.features import NormalizerSettings, NormalizerSnapshot
from tamiyo_bus.policy.profiles import Profile
from tamiyo_bus.policy.topology import HostTopology
from tamiyo_bus.risk import RiskSettings
from tamiyo_bus.risk.breakers import MetricsSink
from tamiyo_bus.security.commands import CommandVerifier
from tamiyo_bus.security.policy_update import PolicyHolder
from tamiyo_bus.settings import DecisionMode, StepSettings
from tamiyo_bus.tolaria.data import Dataset, load
from tamiyo_bus.tolaria.lr import LRController, LRSettings
from tamiyo_bus.tolaria.models import HostModel, build_host, host_topology
from tamiyo_bus.tolaria.trainer import Tolaria, TolariaSettings, TrainingObserver
from tamiyo_bus.urza.store import UrzaStore, candidate_blueprints

REPRODUCIBLE_EVERY_STEPS = 4  # the cadence of a reproducible run unless one is set


@dataclass(frozen=True)
class RunSpec:
    """What to train and how; the demo's flags map onto these fields."""

    # A host short of capacity (a CNN of two channels per layer reaches about 91 % on
    # digits, a wide one 97 %), so that growing it can matter; its steps (a few
    # milliseconds, mostly in convolution kernels) leave the inference worker the
    # interpreter most of the time, so decisions arrive a step or two after their state.
    dataset: str = "digits"
    model: str = "cnn"
    width: int = 2
    depth: int = 2
    epochs: int = 60
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"  # auto: CUDA when available, else CPU
    base_lr: float = 3e-3
    profile: Profile | None = None  # the policy's size; None: the device's default
    # Decide synchronously at a fixed cadence, without timings in the packets: the same
    # seed gives the same commands.
    reproducible: bool = False
    # sampled decisions, as the policy was trained and as a learner needs them (served
    # greedily, the shipped policy took no action in the real runs tried: `--greedy`)
    step: StepSettings = field(default_factory=lambda: StepSettings(sample_actions=True))
    kasmina: KasminaSettings = field(default_factory=KasminaSettings)
    risk: RiskSettings = field(default_factory=RiskSettings)
    # False: the feature statistics stay as the policy was trained on them
    normalizer_update: bool = True

    @property
    def tamiyo(self) -> TamiyoSettings:
        step = self.step
        if self.reproducible:
            step = replace(
                step,
                decision_mode=DecisionMode.SYNCHRONOUS,
                decision_every_steps=step.decision_every_steps or REPRODUCIBLE_EVERY_STEPS,
            )
        return TamiyoSettings(
            step, self.risk, normalizer=NormalizerSettings(update=self.normalizer_update)
        )

    def steps_per_epoch(self, data: Dataset) -> int:
        return len(data.train_x) // self.batch_size


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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

    def close(self) -> None:
        self.tamiyo.close()


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
    normalizer: NormalizerSnapshot | None = None,
    telemetry: TelemetrySink | None = None,
    experience: TrajectorySink | None = None,
    events: EventSink | None = None,
    metrics: MetricsSink | None = None,
    adopted_breakers: Mapping[BreakerName, CircuitBreaker] | None = None,
) -> Run:
    """The whole in-process step path for ``spec``, Tamiyo's workers started and warm;
    no training step has run yet (``Run.close`` stops the workers). Without ``holder``
    Tamiyo starts from ``initial_policy``; ``normalizer``: the feature statistics the
    holder's policy was trained with."""
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
        spec.tamiyo, topology=topology, blueprints=store,
        candidates=candidate_blueprints(store, topology), signer=signer,
        holder=holder or initial_policy(device, spec.seed, spec.profile), seed=spec.seed,
        normalizer=normalizer, telemetry=telemetry, experience=experience, events=events,
        metrics=metrics, adopted_breakers=adopted_breakers,
    ).start()  # fmt: skip
    trainer = Tolaria(
        model,
        data,
        TolariaSettings(
            epochs=spec.epochs,
            batch_size=spec.batch_size,
            timing_metrics=not spec.reproducible,
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
