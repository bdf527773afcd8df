"""Parsing a verified envelope's payload into its Leyline message.

A signature says who sent a payload, not that it parses: a handler that let a decode
error escape would have its entry retried up to the delivery bound and then
dead-lettered whole. `decode` turns any parse failure into a RejectedMessage, which
the consumer dead-letters at once, and alone (the rest of a batch is still applied).
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message

from oona.errors import RejectedMessage

LeylineMessage = TypeVar("LeylineMessage", bound=Message)


def decode(message_type: type[LeylineMessage], payload: bytes) -> LeylineMessage:
    """`payload` parsed as `message_type`; RejectedMessage('malformed_payload') when
    it does not parse, whatever the parser raised."""
    try:
        return message_type.FromString(payload)
    except Exception as exc:  # DecodeError, or a RecursionError on hostile nesting
        detail = f"not a {message_type.DESCRIPTOR.name}: {type(exc).__name__}: {exc}"
        raise RejectedMessage("malformed_payload", detail[:500]) from None
