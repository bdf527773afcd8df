"""A session: the bus, the keys, the services and the field-report log that one or more
training runs share.

The demo runs one training run in a session; ``tamiyo-bus train --env real`` runs many
one after another in the same session, so that Tamiyo's experience and field reports of
every run reach the same Simic, and the policy Simic publishes carries over from run to
run (one policy holder for the session, updated by the policy listener).

    Session.open(...)  embedded server (or TAMIYO_REDIS_URL), throw-away role keys,
                       Weatherlight's services, the field reporter and its delivery,
                       the experience publisher
    session.run(spec)  assemble the run (Urza, Tamiyo, Kasmina, Tolaria), train it,
                       end it, let Simic ack its reports
    session.close()    flush and stop everything
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from leyline_vocab.telemetry import SOURCE_TAMIYO, SOURCE_TOLARIA
from oona.server import EmbeddedServer
from oona.settings import OonaSettings
from producers.sinks import DecisionTelemetrySink, TelemetryEventSink, TelemetryMetricsSink
from tamiyo_bus.experience.publisher import TrajectoryPublisher
from tamiyo_bus.reports.book import ReportState
from tamiyo_bus.reports.reporter import FieldReporter, ReportSettings
from tamiyo_bus.security.policy_update import PolicyHolder
from tamiyo_bus.simic.settings import LearnerSettings
from tamiyo_bus.tolaria.trainer import TrainingObserver
from tamiyo_bus.urza.store import UrzaStore
from weatherlight.demo.assembly import Run, RunSpec, assemble
from weatherlight.demo.drain import run_server
from weatherlight.demo.layout import RunLayout
from weatherlight.demo.observers import FieldReportObserver, TolariaTelemetry
from weatherlight.demo.recorder import RunRecorder
from weatherlight.demo.services import AsyncSide, ServiceSettings
from weatherlight.role_keys import RoleKeys
from weatherlight.settings import SystemSettings

REPORTS_SETTLE_S = 20.0  # at a run's end, how long to wait for Simic to ack its reports
IDLE_WAIT_S = 5.0


@dataclass
class RunResult:
    """One trained run and what was recorded of it."""

    run: Run
    recorder: RunRecorder
    reports: FieldReportObserver
    wall_s: float
    report_counts: dict[ReportState, int] = field(default_factory=dict)


class Session:
    """Open with :meth:`open` (or as a context manager); ``run`` as often as needed."""

    def __init__(
        self,
        *,
        directory: Path,
        oona: OonaSettings,
        server: EmbeddedServer | None,
        keys: RoleKeys,
        store: UrzaStore,
        side: AsyncSide,
        reporter: FieldReporter,
        experience: TrajectoryPublisher,
    ) -> None:
        self.directory = directory
        self.oona = oona
        self.server = server
        self.keys = keys
        self.store = store
        self.side = side
        self.reporter = reporter
        self.experience = experience

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        holder: PolicyHolder,
        spec: RunSpec,
        system: SystemSettings,
        nissa_port: int = 0,
        learner: LearnerSettings | None = None,
    ) -> Session:
        """Start the server (unless TAMIYO_REDIS_URL names one), the services and the
        field reporter, all under ``directory`` as :class:`RunLayout` names them (so that
        ``demo-drain`` can reopen a session that was killed); the directory's name
        prefixes the session's keys on the server. With ``learner``, Simic's learner
        runs beside the intake."""
        directory.mkdir(parents=True, exist_ok=True)
        layout = RunLayout(directory)
        keys = RoleKeys.create(layout.keys)
        oona, server = run_server(layout, system.oona)
        side = AsyncSide(
            oona=oona, keys=keys, run_id=layout.run_id, run_dir=directory, holder=holder,
            policy_update_breaker=spec.risk.breakers.policy_update,
            settings=ServiceSettings(nissa_port=nissa_port, learner=learner),
        )  # fmt: skip
        reporter = FieldReporter(ReportSettings(wal_dir=layout.field_reports)).start()
        try:
            side.start()
            side.deliver_reports(reporter)
            experience = side.publish_experience(spec.tamiyo.experience)
        except BaseException:
            side.stop()
            reporter.close()
            if server is not None:
                server.stop()
            raise
        store = UrzaStore.open_seeded(system.urza)
        return cls(
            directory=directory, oona=oona, server=server, keys=keys, store=store, side=side,
            reporter=reporter, experience=experience,
        )  # fmt: skip

    def run(
        self,
        spec: RunSpec,
        run_id: str,
        *,
        holder: PolicyHolder,
        observers: tuple[TrainingObserver, ...] = (),
        on_assembled: Callable[[Run], None] = lambda _: None,
    ) -> RunResult:
        """Train one run of ``spec`` with ``holder``'s policy; its experience and field
        reports go to the session's services, and its end is reported to both."""
        tamiyo_producer = self.side.producer(SOURCE_TAMIYO)
        recorder = RunRecorder()
        reports = FieldReportObserver(self.reporter)
        built = assemble(
            spec, run_id=run_id, signer=self.keys.signer(SOURCE_TAMIYO),
            keyring=self.keys.keyring, store=self.store,
            observers=[
                recorder, reports,
                TolariaTelemetry(self.side.producer(SOURCE_TOLARIA), run_id), *observers,
            ],
            holder=holder, telemetry=DecisionTelemetrySink(tamiyo_producer),
            experience=self.experience.submit,
            events=TelemetryEventSink(tamiyo_producer, run=run_id),
            metrics=TelemetryMetricsSink(tamiyo_producer, run=run_id),
            adopted_breakers=self.side.breakers,
        )  # fmt: skip
        self.side.forward_kasmina(built.kasmina.outbox, run_id)
        on_assembled(built)
        # Everything built so far lives for the whole run: a full collection would
        # re-scan it (hundreds of milliseconds with torch loaded) on whichever thread
        # triggers it, the trainer's included. Frozen, it is never scanned again.
        gc.collect()
        gc.freeze()
        started = time.perf_counter()
        try:
            built.trainer.run()
            wall_s = time.perf_counter() - started
            built.tamiyo.end_run(built.trainer.state_packet())
            counts = self._settle_reports(run_id)
            built.tamiyo.wait_idle(IDLE_WAIT_S)
        finally:
            built.close()
            gc.unfreeze()
        return RunResult(built, recorder, reports, wall_s, counts)

    def _settle_reports(self, run_id: str) -> dict[ReportState, int]:
        """Close the run's windows and give Simic a moment to ack the last reports."""
        self.reporter.on_run_end(run_id)
        self.reporter.flush()
        deadline = time.monotonic() + REPORTS_SETTLE_S
        while self.reporter.book.counts()[ReportState.PENDING] and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.reporter.book.counts()

    def close(self) -> None:
        """Publish what is left, then stop the services, the reporter and the server."""
        try:
            self.side.stop()
        finally:
            self.reporter.close()
            if self.server is not None:
                self.server.stop()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
