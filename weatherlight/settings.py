"""The one settings tree of a deployment, and the one place the environment is read.

Each component keeps its own frozen settings dataclass (documented in
docs/configuration.md); ``SystemSettings`` composes them, puts every path under one
data directory, and ``from_env`` reads the environment once for all of them. The
commands build it first and hand each component its branch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from consumers.simic import SimicSettings
from oona.keyfiles import KeySettings
from oona.settings import DEFAULT_DATA_DIR, OonaSettings
from oona.streams import Stream
from tamiyo_bus import TamiyoSettings
from tamiyo_bus.impala.settings import ImpalaSettings
from tamiyo_bus.kasmina.settings import KasminaSettings
from tamiyo_bus.reports.reporter import ReportSettings
from tamiyo_bus.security.policy_update import PolicyUpdateSettings
from tamiyo_bus.simic.settings import LearnerSettings, short_run_learner
from tamiyo_bus.urza.store import UrzaSettings
from weatherlight.learner import ENV_SIMIC_SIGNING_KEY_FILE
from weatherlight.services import WeatherlightSettings

ENV_REDIS_URL = "TAMIYO_REDIS_URL"
ENV_DATA_DIR = "TAMIYO_DATA_DIR"
ENV_URZA_DB = "TAMIYO_URZA_DB"
ENV_REDIS_APPENDONLY = "TAMIYO_REDIS_APPENDONLY"
ENV_REDIS_APPENDFSYNC = "TAMIYO_REDIS_APPENDFSYNC"
ENV_REDIS_CLUSTER = "TAMIYO_REDIS_CLUSTER"
ENV_LEARNER = "TAMIYO_LEARNER"
LEARNER_VTRACE = "vtrace"  # TAMIYO_LEARNER's value for the V-trace learner
ENV_LEARNER_START_CHECKPOINT = "TAMIYO_LEARNER_START_CHECKPOINT"
ENV_LEARNER_SHORT_RUNS = "TAMIYO_LEARNER_SHORT_RUNS"
ENV_CLAIM_IDLE_MS = "TAMIYO_CLAIM_IDLE_MS"
ENV_TRAJECTORIES_MAX_ENTRIES = "TAMIYO_TRAJECTORIES_MAX_ENTRIES"
POLICY_VERSION_RECORD = Path("tamiyo") / "policy_version.json"
_FALSE = frozenset({"0", "false", "no", "off"})
_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True)
class SystemSettings:
    """Every component's settings; ``under(data_dir)`` places their files (each
    component's default path, moved from the default data directory)."""

    data_dir: Path = DEFAULT_DATA_DIR
    oona: OonaSettings = field(default_factory=OonaSettings)
    keys: KeySettings = field(default_factory=KeySettings)
    urza: UrzaSettings = field(default_factory=UrzaSettings)
    tamiyo: TamiyoSettings = field(default_factory=TamiyoSettings)
    kasmina: KasminaSettings = field(default_factory=KasminaSettings)
    reports: ReportSettings = field(default_factory=ReportSettings)
    policy_update: PolicyUpdateSettings = field(default_factory=PolicyUpdateSettings)
    weatherlight: WeatherlightSettings = field(default_factory=WeatherlightSettings)
    impala: ImpalaSettings = field(default_factory=ImpalaSettings)  # the V-trace learner

    @classmethod
    def under(cls, data_dir: Path) -> SystemSettings:
        """Defaults, with the server's data, Urza's library, the field-report log,
        Simic's store, the learners' state and the record of the highest policy
        version under ``data_dir``."""

        def moved(default: Path) -> Path:
            return data_dir / default.relative_to(DEFAULT_DATA_DIR)

        return cls(
            data_dir=data_dir,
            oona=OonaSettings(data_dir=data_dir),
            urza=UrzaSettings(db_path=moved(UrzaSettings().db_path)),
            reports=ReportSettings(wal_dir=moved(ReportSettings().wal_dir)),
            policy_update=PolicyUpdateSettings(
                version_record_path=data_dir / POLICY_VERSION_RECORD
            ),
            weatherlight=WeatherlightSettings(
                simic=SimicSettings(db_path=moved(SimicSettings().db_path)),
                learner=LearnerSettings(data_dir=moved(LearnerSettings().data_dir)),
            ),
            impala=ImpalaSettings(data_dir=moved(ImpalaSettings().data_dir)),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SystemSettings:
        """``under(TAMIYO_DATA_DIR)``, with TAMIYO_REDIS_URL, TAMIYO_REDIS_APPENDONLY
        (``0``/``false``/``no``/``off`` turn the embedded server's persistence off),
        TAMIYO_REDIS_APPENDFSYNC, TAMIYO_REDIS_CLUSTER (``1``/``true``/``yes``/``on``: the
        URL names a node of a Redis Cluster), TAMIYO_CLAIM_IDLE_MS,
        TAMIYO_TRAJECTORIES_MAX_ENTRIES (the trajectories stream's cap: how many segments
        a learner may lag behind its actors), TAMIYO_URZA_DB, the key variables
        (oona.keyfiles.KeySettings.from_env), TAMIYO_LEARNER (the same words turn Simic's
        learner off; ``vtrace`` runs the V-trace learner, ``impala``, as the learner
        service instead), TAMIYO_SIMIC_SIGNING_KEY_FILE,
        TAMIYO_LEARNER_START_CHECKPOINT and TAMIYO_LEARNER_SHORT_RUNS (``1``/``true``/
        ``yes``/``on``: the learner sized for short runs) applied; empty values count as
        unset."""
        env = os.environ if environ is None else environ

        def value(name: str) -> str:
            return env.get(name, "").strip()

        base = cls.under(Path(value(ENV_DATA_DIR) or DEFAULT_DATA_DIR))
        urza_db = value(ENV_URZA_DB)
        oona = replace(base.oona, redis_url=value(ENV_REDIS_URL))
        if value(ENV_REDIS_APPENDONLY):
            oona = replace(oona, appendonly=value(ENV_REDIS_APPENDONLY).lower() not in _FALSE)
        if value(ENV_REDIS_APPENDFSYNC):
            oona = replace(oona, appendfsync=value(ENV_REDIS_APPENDFSYNC))
        if value(ENV_REDIS_CLUSTER):
            oona = replace(oona, redis_cluster=value(ENV_REDIS_CLUSTER).lower() in _TRUE)
        if value(ENV_CLAIM_IDLE_MS):
            oona = replace(oona, claim_idle_ms=int(value(ENV_CLAIM_IDLE_MS)))
        if value(ENV_TRAJECTORIES_MAX_ENTRIES):
            cap = int(value(ENV_TRAJECTORIES_MAX_ENTRIES))
            caps = {**oona.stream_caps, Stream.TRAJECTORIES.value: cap}
            oona = replace(oona, stream_caps=caps)
        return replace(
            base,
            oona=oona,
            keys=KeySettings.from_env(env),
            urza=replace(base.urza, db_path=Path(urza_db)) if urza_db else base.urza,
            weatherlight=replace(
                base.weatherlight,
                learner=_learner(base, value),
                impala=base.impala if value(ENV_LEARNER).lower() == LEARNER_VTRACE else None,
            ),
        )


def _learner(base: SystemSettings, value: Callable[[str], str]) -> LearnerSettings | None:
    """The learner's branch with its environment applied; None when turned off."""
    learner = base.weatherlight.learner
    if learner is None or value(ENV_LEARNER).lower() in _FALSE:
        return None
    key_file = value(ENV_SIMIC_SIGNING_KEY_FILE)
    start = value(ENV_LEARNER_START_CHECKPOINT)
    if value(ENV_LEARNER_SHORT_RUNS).lower() in _TRUE:
        learner = short_run_learner(learner)
    return replace(
        learner,
        signing_key_file=Path(key_file) if key_file else None,
        start_checkpoint=Path(start) if start else None,
    )
