"""Errors Oona raises to its callers; each names what to do about it."""

from __future__ import annotations


class OonaError(Exception):
    """Base class of the bus's errors."""


class StreamFull(OonaError):
    """A capped stream stayed full for the whole push-back wait.

    Nothing was written for the entries reported; the caller keeps them and may retry.
    """

    def __init__(self, stream: str, length: int, cap: int, unwritten: int) -> None:
        super().__init__(
            f"stream {stream!r} is full ({length}/{cap} entries unacked or retained); "
            f"{unwritten} entries were not written: consumers are behind, or raise its cap"
        )
        self.stream = stream
        self.length = length
        self.cap = cap
        self.unwritten = unwritten


class BusUnavailable(OonaError):
    """The server could not be reached within the IO budget, or the IO breaker is open."""


class RejectedMessage(OonaError):
    """An entry that must not be applied; `reason` is a short stable label for metrics.

    `priority` and `source` are the refused envelope's, set only when its signature
    verified (so the claim is its signer's, not a forger's): a refused CRITICAL message
    is worth an alert, not just a count.
    """

    def __init__(
        self, reason: str, detail: str = "", *, priority: int | None = None, source: str = ""
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.priority = priority
        self.source = source
