"""Signing AdaptationCommands (Tamiyo) and verifying them before they are applied
(Kasmina).

The command travels in-process, so there is no envelope around it: the command carries
its own signature (oona.signed, domain ``tamiyo-bus/adaptation-command/v1``) and the
verifier checks signature (from a key trusted as ``tamiyo``), freshness and replay
itself, in that order, before the executor touches anything. The replay cache is in
memory: the step path makes no network round trip. What it cannot remember across a
restart is covered by a start horizon instead (`refuse_issued_before`): a restarted
executor refuses every command issued before it started, so nothing the previous one
applied can be applied again, and nothing needs writing on the step path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind, event
from oona.errors import RejectedMessage
from oona.events import EventSink, LogEventSink
from oona.freshness import Clock, FreshnessWindow, ReplayCache
from oona.ids import new_message_id
from oona.keys import Keyring, Signer
from oona.metrics import BusMetrics
from oona.signed import COMMAND_DOMAIN, sign_message, verify_message


def stamp_command(
    command: pb.AdaptationCommand, issued_by: str, *, clock_ns: Clock = time.time_ns
) -> None:
    """Give a command a unique time-ordered id, its issue time and issuer, as
    `evaluate_step` must before signing."""
    command.command_id = new_message_id()
    command.issued_at_ns = clock_ns()
    command.issued_by = issued_by


class CommandSigner:
    """Signs commands with the active private key (Tamiyo's side)."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    @property
    def key_id(self) -> str:
        return self.signer.key_id

    def sign(self, command: pb.AdaptationCommand) -> None:
        """Fill `command.signature` (key id and signature) in place; any earlier
        signature is replaced."""
        sign_message(COMMAND_DOMAIN, command, self.signer)


@dataclass(frozen=True)
class CommandVerifierSettings:
    """What the executor accepts: the freshness window against its own clock, and how
    many command ids the replay cache holds (well above the commands issued per
    window: one per optimiser step)."""

    max_age_ms: float = 60_000.0
    max_future_ms: float = 5_000.0
    replay_cache_max_entries: int = 200_000


class CommandVerifier:
    """Checks a command before it is applied (Kasmina's side).

    `keyring` may be replaced at any time to rotate keys (one reference assignment).
    Every rejection is counted as ``commands_rejected{reason}`` in `metrics` and
    emitted as a ``command_rejected`` event, then raised as RejectedMessage.
    """

    def __init__(
        self,
        keyring: Keyring,
        settings: CommandVerifierSettings | None = None,
        *,
        metrics: BusMetrics | None = None,
        events: EventSink | None = None,
        clock_ns: Clock = time.time_ns,
    ) -> None:
        self.keyring = keyring
        self.settings = settings or CommandVerifierSettings()
        self.metrics = metrics or BusMetrics()
        self.events: EventSink = events or LogEventSink()
        self.window = FreshnessWindow(self.settings.max_age_ms, self.settings.max_future_ms)
        self._clock_ns = clock_ns
        self.replay_cache = ReplayCache(
            self.window, max_entries=self.settings.replay_cache_max_entries, clock_ns=clock_ns
        )
        self._not_before_ns: int | None = None

    def refuse_issued_before(self, start_ns: int) -> None:
        """From now on refuse, as ``issued_before_start``, every command issued at or
        before `start_ns`: an executor calls it with its start time, so a command an
        earlier process applied (its replay cache is gone) is never applied again."""
        self._not_before_ns = start_ns

    def verify(self, command: pb.AdaptationCommand) -> None:
        """Return if the command may be applied; raise RejectedMessage otherwise.

        Order matters: the signature first, so nothing unauthenticated reaches the
        replay cache; the id is recorded only once every other check has passed.
        """
        try:
            verify_message(COMMAND_DOMAIN, command, self.keyring)
            if not command.command_id:
                raise RejectedMessage("malformed", "command has no command_id")
            self.window.check(command.issued_at_ns, self._clock_ns())
            if self._not_before_ns is not None and command.issued_at_ns <= self._not_before_ns:
                raise RejectedMessage("issued_before_start", "issued before this executor started")
            self.replay_cache.check_and_add(command.command_id, command.issued_at_ns)
        except RejectedMessage as rejection:
            self.metrics.inc("commands_rejected", reason=rejection.reason)
            self.events.emit(
                event(
                    EventKind.COMMAND_REJECTED,
                    reason=rejection.reason,
                    detail=rejection.detail,
                    command_id=command.command_id,
                    issued_by=command.issued_by,
                    key_id=command.signature.key_id,
                )
            )
            raise
        self.metrics.inc("commands_verified")
