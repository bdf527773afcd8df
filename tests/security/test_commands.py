"""AdaptationCommands: signed by Tamiyo, verified by the executor before anything is
applied; signature, freshness and replay each rejected with a counted reason."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind
from oona.errors import RejectedMessage
from oona.events import BufferedEventSink
from oona.ids import id_timestamp_ns
from oona.keys import UNRESTRICTED, Keyring, Signer
from oona.metrics import BusMetrics
from tamiyo_bus.security.commands import (
    CommandSigner,
    CommandVerifier,
    CommandVerifierSettings,
    stamp_command,
)

from .helpers import seed_command

SECOND_NS = 1_000_000_000
T0_NS = 1_800_000_000 * SECOND_NS


class Clock:
    """A settable wall clock, so windows of a minute are crossed without waiting."""

    def __init__(self, now_ns: int = T0_NS) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


def _verifier(keyring: Keyring, clock: Callable[[], int], **settings: float) -> CommandVerifier:
    return CommandVerifier(
        keyring,
        CommandVerifierSettings(**settings),  # type: ignore[arg-type]
        metrics=BusMetrics(),
        events=BufferedEventSink(),
        clock_ns=clock,
    )


def _signed(signer: Signer, clock: Clock, global_step: int = 1) -> pb.AdaptationCommand:
    command = seed_command(global_step)
    stamp_command(command, "tamiyo", clock_ns=clock)
    CommandSigner(signer).sign(command)
    return command


def _reason(verifier: CommandVerifier, command: pb.AdaptationCommand) -> str:
    with pytest.raises(RejectedMessage) as rejected:
        verifier.verify(command)
    return rejected.value.reason


def test_stamped_and_signed_command_verifies_with_key_id_and_time_ordered_id(
    signer: Signer, keyring: Keyring
) -> None:
    clock = Clock()
    first, second = _signed(signer, clock, 1), _signed(signer, clock, 2)
    verifier = _verifier(keyring, clock)

    verifier.verify(first)
    verifier.verify(second)

    assert first.signature.key_id == signer.key_id
    assert len(first.signature.signature) == 64
    assert first.issued_by == "tamiyo" and first.issued_at_ns == T0_NS
    assert first.command_id < second.command_id
    assert id_timestamp_ns(first.command_id) > 0
    assert verifier.metrics.count("commands_verified") == 2


def test_signer_satisfies_the_step_paths_protocol_and_resigns_in_place(signer: Signer) -> None:
    command = _signed(signer, Clock())
    first_signature = command.signature.signature
    command.global_step += 1
    CommandSigner(signer).sign(command)
    assert command.signature.signature != first_signature


def test_replay_inside_the_window_is_rejected_as_replay_and_outside_as_stale(
    signer: Signer, keyring: Keyring
) -> None:
    clock = Clock()
    verifier = _verifier(keyring, clock)
    command = _signed(signer, clock)
    verifier.verify(command)

    clock.now_ns += 30 * SECOND_NS
    assert _reason(verifier, command) == "replay"
    clock.now_ns += 31 * SECOND_NS
    assert _reason(verifier, command) == "stale"
    assert len(verifier.replay_cache) == 0  # the id expired only once the command was stale


def test_each_rejection_reason_is_counted_and_emitted(signer: Signer, keyring: Keyring) -> None:
    clock = Clock()
    verifier = _verifier(keyring, clock)

    unsigned = seed_command()
    stamp_command(unsigned, "tamiyo", clock_ns=clock)
    stranger = _signed(Signer.generate(), clock)
    tampered = _signed(signer, clock)
    tampered.seed.blueprint_id = "bp-huge"
    future = _signed(signer, Clock(T0_NS + 6 * SECOND_NS))
    stale = _signed(signer, Clock(T0_NS - 61 * SECOND_NS))
    no_id = seed_command()
    no_id.issued_at_ns = T0_NS
    CommandSigner(signer).sign(no_id)
    once = _signed(signer, clock)
    verifier.verify(once)

    reasons = [
        _reason(verifier, c) for c in (unsigned, stranger, tampered, future, stale, no_id, once)
    ]

    expected = [
        "missing_signature", "unknown_key", "invalid_signature", "future", "stale", "malformed",
        "replay",
    ]  # fmt: skip
    assert reasons == expected
    for reason in expected:
        assert verifier.metrics.count("commands_rejected", reason=reason) == 1
    assert isinstance(verifier.events, BufferedEventSink)
    events = verifier.events.drain()
    assert [e.name for e in events] == [EventKind.COMMAND_REJECTED] * len(expected)
    assert [e.attributes["reason"] for e in events] == expected
    assert events[1].attributes["key_id"] == stranger.signature.key_id
    assert verifier.metrics.count("commands_verified") == 1


def test_verification_does_not_modify_the_command(signer: Signer, keyring: Keyring) -> None:
    clock = Clock()
    command = _signed(signer, clock)
    before = command.SerializeToString(deterministic=True)
    _verifier(keyring, clock).verify(command)
    assert command.SerializeToString(deterministic=True) == before


def test_concurrent_presentations_of_one_command_apply_it_once(
    signer: Signer, keyring: Keyring
) -> None:
    clock = Clock()
    verifier = _verifier(keyring, clock)
    command = _signed(signer, clock)
    accepted: list[bool] = []
    start = threading.Barrier(4)

    def present() -> None:
        start.wait()
        try:
            verifier.verify(command)
            accepted.append(True)
        except RejectedMessage:
            accepted.append(False)

    threads = [threading.Thread(target=present) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(accepted) == [False, False, False, True]


def test_rotation_overlap_verifies_old_and_new_keys_then_retires_the_old(
    signer: Signer, keyring: Keyring
) -> None:
    clock = Clock()
    new = Signer.generate()
    verifier = _verifier(keyring, clock)
    verifier.keyring = keyring.with_key(new.public_key(), UNRESTRICTED)

    verifier.verify(_signed(signer, clock, 1))
    verifier.verify(_signed(new, clock, 2))

    verifier.keyring = verifier.keyring.without_key(signer.key_id)
    verifier.verify(_signed(new, clock, 3))
    assert _reason(verifier, _signed(signer, clock, 4)) == "unknown_key"
