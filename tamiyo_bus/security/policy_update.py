"""PolicyUpdates applied as one transaction, the `policy` stream listener that feeds
them in, and the helpers that build and publish a signed one (a learner's side).

The transaction either installs a new policy or changes nothing. It never writes into
the running module: it validates the update, builds the new policy in a copy, and
installs the copy by replacing one reference under the holder's lock. A decision that
took its snapshot with `PolicyHolder.current()` keeps the module it started with, so
a swap can never land mid-inference, and the step path never waits on the swap (nor
the swap on a wedged inference).

Weights are loaded only with `safetensors.torch.load`, which reads tensors and
executes nothing. A pickle runs code when it is loaded, so any pickle (bare, or inside
a `torch.save` zip archive) is refused before a loader sees it.

Freshness is judged by the update's signed issue time against this process's clock.
The highest version installed is kept on disk (`VersionRecord`) when the settings
name a file, so a restart does not reopen the door to an old update; a replay
(stale, or not newer) is refused without counting against the policy-update
breaker, which is there for a broken learner, not for an attacker on the bus.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind, event
from leyline_vocab.roles import ROLES
from oona.breaker import CircuitBreaker
from oona.bus import Bus
from oona.consumer import Consumer, Delivery, Subscription
from oona.errors import RejectedMessage
from oona.events import EventSink, LogEventSink
from oona.freshness import Clock, FreshnessWindow
from oona.keyfiles import KeySettings
from oona.keys import Keyring, Signer
from oona.metrics import BusMetrics
from oona.payloads import decode
from oona.signed import POLICY_UPDATE_DOMAIN, sign_message, verify_message
from oona.streams import Stream
from tamiyo_bus.security.version_record import VersionRecord, VersionRecordError

SAFETENSORS_FORMAT = "safetensors"
POLICY_GROUP = "tamiyo"
_PICKLE_PROTOCOL_OPCODE = 0x80
_ZIP_MAGIC = b"PK\x03\x04"
_SAFETENSORS_HEADER_LEN_BYTES = 8
_LISTENER_READ_ENTRIES = 2  # entries per read: each may be max_payload_bytes
REPLAY_REASONS = frozenset({"stale", "future", "not_newer", "breaker_open"})
"""Rejections that do not count against the policy-update breaker: what a replay of a
genuine update (or the open breaker itself) produces."""


@dataclass(frozen=True, eq=False)
class RunningPolicy:
    """A policy module with the identity updates are checked against.

    The module is treated as read-only once installed: updates build a new one.
    """

    module: torch.nn.Module
    policy_id: str
    version: int
    architecture_id: str
    registry_digest: str


class RollbackUnavailable(RuntimeError):
    """There is no previous policy to return to (none yet, or already rolled back)."""


class PolicyHolder:
    """The running policy, the one it replaced, and the lock that orders changes.

    The step path calls `current()` once per decision and uses that snapshot
    throughout; it never takes `lock`, which only writers (updates, rollbacks) hold.
    `highest_version` is the newest version ever installed: after a rollback an
    update must still be newer than the version rolled back from, so a bad version
    cannot be re-applied by replaying its update.
    """

    def __init__(self, initial: RunningPolicy) -> None:
        self.lock = threading.Lock()
        self._current = initial
        self._previous: RunningPolicy | None = None
        self._highest_version = initial.version

    def current(self) -> RunningPolicy:
        """The policy to use for one whole decision."""
        return self._current

    @property
    def previous(self) -> RunningPolicy | None:
        return self._previous

    @property
    def highest_version(self) -> int:
        return self._highest_version

    def install(self, policy: RunningPolicy) -> RunningPolicy:
        """Make `policy` current and keep the replaced one for rollback; the caller
        holds `lock`. Returns the replaced policy."""
        old = self._current
        self._previous = old
        self._current = policy
        self._highest_version = max(self._highest_version, policy.version)
        return old

    def restore_previous(self) -> tuple[RunningPolicy, RunningPolicy]:
        """Make the previous policy current again; the caller holds `lock`. Returns
        (the policy rolled back from, the restored one)."""
        if self._previous is None:
            raise RollbackUnavailable("no previous policy is kept")
        rolled_back, restored = self._current, self._previous
        self._current, self._previous = restored, None
        return rolled_back, restored


@dataclass(frozen=True)
class PolicyUpdateSettings:
    """Limits of the transaction. Freshness is the update's signed issue time against
    the transaction's clock. `version_record_path` keeps the highest installed version
    across restarts (None: in memory only, for tests)."""

    max_age_ms: float = 60_000.0
    max_future_ms: float = 5_000.0
    max_payload_bytes: int = 64 * 1024 * 1024
    version_record_path: Path | None = None


def encode_weights(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """A state dict as safetensors bytes (each tensor copied to contiguous CPU memory,
    so tied or strided tensors serialise too)."""
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in state_dict.items()}
    return save_safetensors(tensors)


def build_policy_update(
    state_dict: Mapping[str, torch.Tensor],
    *,
    policy_id: str,
    version: int,
    architecture_id: str,
    registry_digest: str,
    signer: Signer,
    clock_ns: Clock = time.time_ns,
) -> pb.PolicyUpdate:
    """A signed PolicyUpdate carrying `state_dict` as safetensors (the learner's side)."""
    payload = encode_weights(state_dict)
    update = pb.PolicyUpdate(
        policy_id=policy_id,
        policy_version=version,
        architecture_id=architecture_id,
        registry_digest=registry_digest,
        issued_at_ns=clock_ns(),
        payload_format=SAFETENSORS_FORMAT,
        payload=payload,
        payload_sha256=hashlib.sha256(payload).hexdigest(),
    )
    sign_message(POLICY_UPDATE_DOMAIN, update, signer)
    return update


async def publish_policy_update(bus: Bus, update: pb.PolicyUpdate) -> str:
    """Publish a signed PolicyUpdate on the policy stream; returns its message id."""
    return await bus.publish(
        pb.MESSAGE_TYPE_POLICY_UPDATE, update.SerializeToString(), stream=Stream.POLICY
    )


def _looks_like_pickle(payload: bytes) -> bool:
    """A pickle (protocol 2 and later start with the PROTO opcode) or a torch.save zip
    archive, which holds one."""
    pickled = len(payload) > 1 and payload[0] == _PICKLE_PROTOCOL_OPCODE and 2 <= payload[1] <= 5
    return pickled or payload.startswith(_ZIP_MAGIC)


def load_tensors(payload: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors payload; RejectedMessage for a pickle or anything
    else that is not safetensors, whatever the parser raised."""
    if _looks_like_pickle(payload):
        raise RejectedMessage("pickle_payload", "payload is a pickle; it is never unpickled")
    header = payload[_SAFETENSORS_HEADER_LEN_BYTES : _SAFETENSORS_HEADER_LEN_BYTES + 1]
    if header != b"{":
        raise RejectedMessage("malformed_payload", "payload is not a safetensors file")
    try:
        return load_safetensors(payload)
    except Exception as exc:  # the Rust parser raises its own error types
        raise RejectedMessage("malformed_payload", f"{type(exc).__name__}: {exc}") from None


def _check_tensors(
    loaded: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> None:
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing or unexpected:
        raise RejectedMessage(
            "tensor_names_mismatch", f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, want in expected.items():
        got = loaded[name]
        if tuple(got.shape) != tuple(want.shape):
            raise RejectedMessage(
                "tensor_shape_mismatch", f"{name}: {tuple(got.shape)} != {tuple(want.shape)}"
            )
        if got.dtype != want.dtype:
            raise RejectedMessage("tensor_dtype_mismatch", f"{name}: {got.dtype} != {want.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise RejectedMessage("non_finite_weights", name)


class PolicyUpdateTransaction:
    """Validates PolicyUpdates and installs them into a PolicyHolder, all or nothing.

    With a `breaker` (the risk engine's policy-update breaker), repeated rejections
    open it and, while open, updates are refused as ``breaker_open`` until its
    half-open trial. Each rejection is counted as ``policy_updates_rejected{reason}``, emitted as a
    ``policy_update_rejected`` event and raised as RejectedMessage; the running policy
    is then exactly as it was. Success is counted, emitted as
    ``policy_update_applied`` with the old and new versions, and returns the policy.
    """

    def __init__(
        self,
        holder: PolicyHolder,
        keyring: Keyring,
        settings: PolicyUpdateSettings | None = None,
        *,
        metrics: BusMetrics | None = None,
        events: EventSink | None = None,
        breaker: CircuitBreaker | None = None,
        clock_ns: Clock = time.time_ns,
    ) -> None:
        self.holder = holder
        self.breaker = breaker
        self.keyring = keyring
        self.settings = settings or PolicyUpdateSettings()
        self.metrics = metrics or BusMetrics()
        self.events: EventSink = events or LogEventSink()
        self.window = FreshnessWindow(self.settings.max_age_ms, self.settings.max_future_ms)
        self._clock_ns = clock_ns
        path = self.settings.version_record_path
        self.record = VersionRecord(path) if path is not None else None

    @property
    def highest_version(self) -> int:
        """The newest version ever installed, by this process or, with a record, by
        any earlier one."""
        recorded = self.record.highest if self.record is not None else 0
        return max(self.holder.highest_version, recorded)

    def apply_serialized(self, raw: bytes) -> RunningPolicy:
        """Parse a serialised PolicyUpdate and `apply` it; bytes that do not parse are
        rejected as ``malformed_payload`` like any other failure."""
        try:
            update = decode(pb.PolicyUpdate, raw)
        except RejectedMessage as rejection:
            self._rejected(pb.PolicyUpdate(), self.holder.current(), rejection)
            raise
        return self.apply(update)

    def apply(self, update: pb.PolicyUpdate) -> RunningPolicy:
        """Install `update` or raise RejectedMessage."""
        with self.holder.lock:
            running = self.holder.current()
            try:
                if self.breaker is not None and not self.breaker.allow():
                    raise RejectedMessage("breaker_open", "the policy-update breaker is open")
                new = self._validate_and_build(update, running)
                self._record(new.version)
            except RejectedMessage as rejection:
                if self.breaker is not None and rejection.reason not in REPLAY_REASONS:
                    self.breaker.record_failure()
                self._rejected(update, running, rejection)
                raise
            old = self.holder.install(new)
        if self.breaker is not None:
            self.breaker.record_success()
        self.metrics.inc("policy_updates_applied")
        self.metrics.set_gauge("policy_version", float(new.version))
        self.events.emit(
            event(
                EventKind.POLICY_UPDATE_APPLIED,
                policy_id=new.policy_id,
                old_version=old.version,
                new_version=new.version,
                key_id=update.signature.key_id,
            )
        )
        return new

    def rollback(self, reason: str) -> RunningPolicy:
        """Return to the previous policy (a ROLLBACK command); RollbackUnavailable when
        none is kept. Returns the restored policy."""
        with self.holder.lock:
            rolled_back, restored = self.holder.restore_previous()
        self.metrics.inc("policy_rollbacks")
        self.metrics.set_gauge("policy_version", float(restored.version))
        self.events.emit(
            event(
                EventKind.POLICY_ROLLED_BACK,
                from_version=rolled_back.version,
                to_version=restored.version,
                reason=reason,
            )
        )
        return restored

    def _record(self, version: int) -> None:
        """Make the new version durable before it is installed (fail closed)."""
        if self.record is None:
            return
        try:
            self.record.advance(version)
        except VersionRecordError as exc:
            raise RejectedMessage("version_record_failed", str(exc)) from None

    def _validate_and_build(self, update: pb.PolicyUpdate, running: RunningPolicy) -> RunningPolicy:
        verify_message(POLICY_UPDATE_DOMAIN, update, self.keyring)
        self.window.check(update.issued_at_ns, self._clock_ns())
        highest = self.highest_version
        if update.policy_version <= highest:
            raise RejectedMessage(
                "not_newer", f"version {update.policy_version} <= {highest} already run"
            )
        if update.architecture_id != running.architecture_id:
            raise RejectedMessage(
                "architecture_mismatch",
                f"{update.architecture_id!r} != {running.architecture_id!r}",
            )
        if update.registry_digest != running.registry_digest:
            raise RejectedMessage(
                "registry_mismatch", f"{update.registry_digest!r} != {running.registry_digest!r}"
            )
        if update.payload_format != SAFETENSORS_FORMAT:
            raise RejectedMessage(
                "unsupported_format", f"{update.payload_format!r}; only safetensors is loaded"
            )
        if len(update.payload) > self.settings.max_payload_bytes:
            raise RejectedMessage(
                "oversized", f"{len(update.payload)} > {self.settings.max_payload_bytes} bytes"
            )
        if hashlib.sha256(update.payload).hexdigest() != update.payload_sha256:
            raise RejectedMessage("digest_mismatch", "payload does not match payload_sha256")
        loaded = load_tensors(update.payload)
        _check_tensors(loaded, running.module.state_dict())
        try:
            candidate = copy.deepcopy(running.module)
            candidate.load_state_dict(loaded, strict=True)
        except Exception as exc:  # any failure here must still leave the policy untouched
            raise RejectedMessage("load_failed", f"{type(exc).__name__}: {exc}"[:500]) from None
        return RunningPolicy(
            module=candidate,
            policy_id=update.policy_id,
            version=update.policy_version,
            architecture_id=running.architecture_id,
            registry_digest=running.registry_digest,
        )

    def _rejected(
        self, update: pb.PolicyUpdate, running: RunningPolicy, rejection: RejectedMessage
    ) -> None:
        self.metrics.inc("policy_updates_rejected", reason=rejection.reason)
        self.events.emit(
            event(
                EventKind.POLICY_UPDATE_REJECTED,
                reason=rejection.reason,
                detail=rejection.detail,
                policy_id=update.policy_id,
                running_version=running.version,
                offered_version=update.policy_version,
            )
        )


class PolicyUpdateListener:
    """Consumes the `policy` stream (group ``tamiyo``, or one per trainer where several
    Tamiyos share a bus: each must apply every update) into a PolicyUpdateTransaction.

    The bus has already verified the envelope; the transaction verifies the update's
    own signature, so a policy is accepted only from a key Tamiyo trusts as ``simic``.
    A rejected update is final: it is written to the policy dead-letter stream with
    its reason and acked, never retried (retrying cannot make it valid). Entries may be
    as large as a whole policy, so each read takes only a couple of them.
    """

    def __init__(
        self,
        bus: Bus,
        transaction: PolicyUpdateTransaction,
        keyring: Keyring,
        *,
        consumer_name: str = "tamiyo",
        group: str = POLICY_GROUP,
    ) -> None:
        self.bus = bus
        self.transaction = transaction
        settings = transaction.settings
        reading = Bus(
            bus.redis,
            bus.settings.with_overrides(read_batch_size=_LISTENER_READ_ENTRIES),
            bus.signer,
            source=bus.source,
            metrics=bus.metrics,
        )
        subscription = Subscription(
            group=group,
            consumer=consumer_name,
            streams=(Stream.POLICY,),
            accepted_types=frozenset({pb.MESSAGE_TYPE_POLICY_UPDATE}),
            max_entry_bytes=settings.max_payload_bytes + 64 * 1024,
            max_age_ms=settings.max_age_ms,
            max_future_ms=settings.max_future_ms,
        )
        self.consumer = Consumer(
            reading, subscription, self._handle, keyring, events=transaction.events
        )

    @classmethod
    def from_key_settings(
        cls,
        bus: Bus,
        holder: PolicyHolder,
        keys: KeySettings,
        settings: PolicyUpdateSettings | None = None,
        *,
        events: EventSink | None = None,
        breaker: CircuitBreaker | None = None,
        consumer_name: str = "tamiyo",
    ) -> PolicyUpdateListener:
        """The listener as a service starts it: the trusted keys come from `keys`, and
        a missing or unusable key raises KeyConfigError before anything touches the
        bus. `breaker` is the risk gate's policy-update breaker (adopted by the gate
        under ``policy_update``), so repeated rejections put the run in conservative
        mode."""
        keyring = keys.load_keyring(ROLES)
        transaction = PolicyUpdateTransaction(
            holder, keyring, settings, metrics=bus.metrics, events=events, breaker=breaker
        )
        return cls(bus, transaction, keyring, consumer_name=consumer_name)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set."""
        await self.consumer.run(stop)

    async def _handle(self, delivery: Delivery) -> None:
        """Apply one update; a RejectedMessage propagates so the consumer dead-letters
        the entry with its reason at once (retrying cannot make it valid)."""
        await asyncio.to_thread(self.transaction.apply_serialized, delivery.envelope.payload)
