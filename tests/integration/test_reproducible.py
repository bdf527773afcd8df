"""A reproducible run (synchronous decisions at a fixed cadence, no timings in the
packets): two runs with the same seed give the same commands, field for field, but for
each command's id, issue time and signature, which are unique by design."""

from __future__ import annotations

from pathlib import Path

from leyline_pb import leyline_pb2 as pb
from oona.events import BufferedEventSink
from oona.keys import UNRESTRICTED, Keyring, Signer
from tamiyo_bus.settings import StepSettings
from tamiyo_bus.urza.store import UrzaSettings, UrzaStore
from weatherlight.demo.assembly import RunSpec, assemble
from weatherlight.demo.recorder import RunRecorder

STEPS = 160


def run_commands(tmp_path: Path, seed: int) -> list[pb.AdaptationCommand]:
    signer = Signer.generate()
    spec = RunSpec(epochs=1, seed=seed, reproducible=True, step=StepSettings(sample_actions=True))
    recorder = RunRecorder()
    run = assemble(
        spec,
        run_id="reproducible",
        signer=signer,
        keyring=Keyring.of(signer.public_key(), role=UNRESTRICTED),
        store=UrzaStore.open_seeded(UrzaSettings(db_path=tmp_path / f"urza-{seed}.sqlite")),
        observers=[recorder],
        events=BufferedEventSink(),
    )
    try:
        data, batch = run.data, spec.batch_size
        for start in range(0, STEPS * batch, batch):
            end = start + batch
            run.trainer.train_step(data.train_x[start:end], data.train_y[start:end])
    finally:
        run.close()
    return [command for _, command in recorder.decisions]


def content(command: pb.AdaptationCommand) -> bytes:
    """The command without what makes every command unique."""
    copy = pb.AdaptationCommand()
    copy.CopyFrom(command)
    for unique in ("command_id", "issued_at_ns", "signature"):
        copy.ClearField(unique)  # type: ignore[arg-type]
    return copy.SerializeToString(deterministic=True)


def test_two_reproducible_runs_of_one_seed_issue_the_same_commands(tmp_path: Path) -> None:
    first = run_commands(tmp_path, seed=3)
    second = run_commands(tmp_path, seed=3)
    assert len(first) >= STEPS // 4  # a decision every 4 steps
    assert {c.command_type for c in first} != {pb.COMMAND_TYPE_NO_OP}  # it did act
    assert [content(c) for c in first] == [content(c) for c in second]
    other = run_commands(tmp_path, seed=4)
    assert [content(c) for c in other] != [content(c) for c in first]
