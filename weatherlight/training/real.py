"""`tamiyo-bus train --env real`: Tamiyo learns from real training runs, over the bus.

The learned arm starts from ``policy`` (by default the learned policy shipped with the
package, served as the demo serves it; Simic's learner continues from the same
weights) and runs ``runs`` short training runs of the demo's host one after another
in one session (weatherlight.demo.session): one embedded server, one set of role keys,
Weatherlight's services with Simic's intake *and learner*, one policy holder. Tamiyo
decides in every run and publishes her experience; the field reports travel as in the
demo; the learner joins both, runs PPO and publishes the candidates its validation gate
passes, signed with Simic's key; Tamiyo's policy listener applies them to the session's
holder, so each run decides with the newest policy (an update may also land mid-run:
a hot swap). Between runs the session waits, at most ``learn_wait_s``, until the learner
has taken in the run's experience and reports, learnt what it could and its last
candidate has been applied.

Then the baseline arms (no growth, the heuristic) run the same seeds in a session of
their own without a learner, so every arm is measured on the same data and weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from leyline_pb import leyline_pb2 as pb
from oona.streams import Stream
from tamiyo_bus import Baseline, baseline_policy
from tamiyo_bus.learning.reward import RewardSettings
from tamiyo_bus.policy.features import NormalizerSnapshot
from tamiyo_bus.reports.book import ReportState
from tamiyo_bus.security.policy_update import PolicyHolder
from tamiyo_bus.simic.learner import Waiting
from tamiyo_bus.simic.settings import LEARNER_GROUP, LearnerSettings, short_run_learner
from weatherlight.demo.assembly import RunSpec, resolve_device
from weatherlight.demo.policies import LEARNED as LEARNED_POLICY
from weatherlight.demo.policies import choose_policy
from weatherlight.demo.progress import ProgressBar, attach_progress
from weatherlight.demo.session import RunResult, Session
from weatherlight.settings import SystemSettings
from weatherlight.training.outcomes import report_reward, run_return

LEARNED = "learned"
BASELINES = "baselines"
POLL_S = 0.1
S = pb.SeedLifecycleStage


def real_learner() -> LearnerSettings:
    """Simic's learner sized for the demo's short runs."""
    return short_run_learner(LearnerSettings())


@dataclass(frozen=True)
class RealTrainingSettings:
    """One ``train --env real``: how many runs, of what, against which baselines."""

    runs: int = 12
    # per run, as in the demo (11 steps an epoch): shorter runs end before anyone grows
    epochs: int = 60
    seed: int = 0  # run i trains with seed + i, in every arm
    baselines: tuple[Baseline, ...] = (Baseline.NONE, Baseline.HEURISTIC)
    learn_wait_s: float = 60.0  # after a learned run, the most it waits for the learner
    # the learned arm's first policy, as the demo's --policy names it; Simic's learner
    # continues from the same weights
    policy: str = LEARNED_POLICY
    reward: RewardSettings = field(default_factory=RewardSettings)
    run: RunSpec = field(default_factory=RunSpec)
    # Simic's learner (its data_dir, profile and seed are the session's)
    learner: LearnerSettings = field(default_factory=real_learner)

    def __post_init__(self) -> None:
        if self.runs < 1 or self.epochs < 1 or self.learn_wait_s < 0:
            raise ValueError("runs and epochs must be >= 1 and learn_wait_s >= 0")


@dataclass(frozen=True)
class RunOutcome:
    """One run of one arm, as the report shows it."""

    arm: str
    index: int
    run_id: str
    seed: int
    policy_version_start: int
    policy_version_end: int
    run_return: float  # the learner's reward summed over the run (training.outcomes)
    report_reward: float  # what its field reports observed, summed
    field_reports: int
    decisions: int
    final_val_accuracy: float
    seeds_germinated: int
    seeds_fossilized: int
    seed_parameters: int  # of live seeds at the end
    host_parameters: int
    wall_s: float
    learn_wait_s: float  # how long the session waited for the learner afterwards


@dataclass
class OverallProgress:
    """The overall line printed before each run."""

    total: int
    done: int = 0
    started_s: float = field(default_factory=time.monotonic)

    def announce(self, arm: str, index: int, runs: int, holder: PolicyHolder) -> None:
        running = holder.current()
        elapsed = time.monotonic() - self.started_s
        print(
            f"[{self.done + 1}/{self.total} overall, {elapsed:.0f} s] {arm} run "
            f"{index + 1}/{runs}: policy {running.policy_id} v{running.version}",
            flush=True,
        )


@dataclass(frozen=True)
class RealTraining:
    outcomes: list[RunOutcome]
    learner_health: Mapping[str, object] | None  # the learner's last word on itself


def train_real(
    settings: RealTrainingSettings,
    directory: Path,
    system: SystemSettings,
    *,
    on_outcome: Callable[[RunOutcome], None] = lambda _: None,
) -> RealTraining:
    """Every arm's runs; each outcome is also handed to ``on_outcome`` as it comes."""
    device = resolve_device(settings.run.device)
    progress = OverallProgress(settings.runs * (1 + len(settings.baselines)))
    outcomes: list[RunOutcome] = []

    def keep(outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        progress.done += 1
        on_outcome(outcome)

    choice = choose_policy(settings.policy, device, settings.run)
    run = choice.serve(settings.run)
    holder = choice.holder
    learner = replace(
        settings.learner,
        data_dir=_session_dir(directory, LEARNED) / "learner",
        profile=choice.profile or settings.learner.profile,
        seed=settings.run.seed,
        start_checkpoint=choice.checkpoint,
    )
    with Session.open(
        _session_dir(directory, LEARNED), holder=holder, spec=run, system=system,
        learner=learner,
    ) as session:  # fmt: skip
        for index in range(settings.runs):
            progress.announce(LEARNED, index, settings.runs, holder)
            version = holder.current().version
            result = _run(session, run, settings, index, LEARNED, holder, choice.normalizer)
            waited = _wait_for_learner(session, holder, settings.learn_wait_s)
            keep(_outcome(session, settings, result, LEARNED, index, version, holder, waited))
        health = session.side.learner_health()
    if not settings.baselines:
        return RealTraining(outcomes, health)
    first = baseline_policy(settings.baselines[0])
    with Session.open(
        _session_dir(directory, BASELINES), holder=first, spec=settings.run, system=system
    ) as session:
        for arm in settings.baselines:
            arm_holder = baseline_policy(arm)
            for index in range(settings.runs):
                progress.announce(arm.value, index, settings.runs, arm_holder)
                version = arm_holder.current().version
                result = _run(session, settings.run, settings, index, arm.value, arm_holder)
                keep(
                    _outcome(session, settings, result, arm.value, index, version, arm_holder, 0.0)
                )
    return RealTraining(outcomes, health)


def _session_dir(directory: Path, arm: str) -> Path:
    """A session's directory; its name prefixes the session's keys on the server, so
    it carries the training's name too (trainings may share a server)."""
    return directory / f"{arm}-{directory.name}"


def _run(
    session: Session,
    run: RunSpec,
    settings: RealTrainingSettings,
    index: int,
    arm: str,
    holder: PolicyHolder,
    normalizer: NormalizerSnapshot | None = None,
) -> RunResult:
    spec = replace(run, epochs=settings.epochs, seed=settings.seed + index)
    bars: list[ProgressBar] = []

    result = session.run(
        spec,
        f"{arm}-{index:03d}",
        holder=holder,
        normalizer=normalizer,
        on_assembled=lambda built: attach_progress(built, bars),
    )
    for bar in bars:
        bar.close()
    return result


def _wait_for_learner(session: Session, holder: PolicyHolder, timeout_s: float) -> float:
    """Until every field report of the run is on the bus (one still in the reporter's
    hands would leave the streams "caught up" too early), the learner has read
    everything published, joined it in a cycle begun after that, learnt what it could
    from it and its newest candidate runs in ``holder``, or ``timeout_s``; the seconds
    waited."""
    started = time.monotonic()
    deadline = started + timeout_s
    streams = (Stream.TRAJECTORIES, Stream.FIELD_REPORTS)
    read_at_cycle: int | None = None
    while time.monotonic() < deadline:
        health = session.side.learner_health()
        if health is not None:
            cycles = _count(health, "cycles")
            if read_at_cycle is None:
                side = session.side
                delivered = not session.reporter.book.counts()[ReportState.PENDING]
                if (
                    delivered
                    and not session.experience.pending
                    and all(side.caught_up(stream, LEARNER_GROUP) for stream in streams)
                ):
                    read_at_cycle = cycles
            elif cycles >= read_at_cycle + 2 and _settled(health, holder):
                break
        time.sleep(POLL_S)
    return time.monotonic() - started


def _count(health: Mapping[str, object], name: str) -> int:
    return int(str(health.get(name, 0)))


def _settled(health: Mapping[str, object], holder: PolicyHolder) -> bool:
    """Nothing awaited, too little left to learn from, the newest candidate applied."""
    waiting = health.get("waiting_for", [])
    return (
        _count(health, "awaiting_reports") == 0
        and _count(health, "awaiting_successors") == 0
        and isinstance(waiting, list)
        and Waiting.EXPERIENCE.value in waiting
        and holder.current().version >= _count(health, "policy_version")
    )


def _outcome(
    session: Session,
    settings: RealTrainingSettings,
    result: RunResult,
    arm: str,
    index: int,
    version_start: int,
    holder: PolicyHolder,
    waited_s: float,
) -> RunOutcome:
    built, recorder = result.run, result.recorder
    reports = [
        entry.report
        for entry in session.reporter.book.entries()
        if entry.report.training_run_id == built.run_id
    ]
    packets = [r.packet for r, _ in recorder.decisions if r.packet is not None]
    history = built.kasmina.history
    last_epoch = recorder.epochs[-1] if recorder.epochs else None
    return RunOutcome(
        arm=arm,
        index=index,
        run_id=built.run_id,
        seed=built.spec.seed,
        policy_version_start=version_start,
        policy_version_end=holder.current().version,
        run_return=run_return(packets, built.trainer.state_packet(), reports, settings.reward),
        report_reward=report_reward(reports, settings.reward),
        field_reports=len(reports),
        decisions=len(packets),
        final_val_accuracy=last_epoch.val_accuracy if last_epoch else float("nan"),
        seeds_germinated=sum(e.to_stage == S.SEED_STAGE_GERMINATED for e in history),
        seeds_fossilized=sum(e.to_stage == S.SEED_STAGE_FOSSILIZED for e in history),
        seed_parameters=last_epoch.seed_parameters if last_epoch else 0,
        host_parameters=built.host_parameters,
        wall_s=result.wall_s,
        learn_wait_s=waited_s,
    )
