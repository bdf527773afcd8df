"""Counting a protobuf message's top-level fields without parsing it.

Parsing builds one object per nested message, so a parser handed a batch of a million
empty envelopes does a million allocations before anything can reject it. This walk
reads only tags and lengths, stops as soon as a bound is passed, and so costs at most
`max_fields` steps whatever the input: the bound is checked before any per-envelope
work.
"""

from __future__ import annotations

_VARINT = 0
_FIXED64 = 1
_LENGTH_DELIMITED = 2
_FIXED32 = 5
_MAX_VARINT_BYTES = 10


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message (or use groups, which no
    Leyline message has)."""


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        if offset + index >= len(data):
            raise WireError("truncated varint")
        byte = data[offset + index]
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            return value, offset + index + 1
    raise WireError("varint longer than 10 bytes")


def count_field(data: bytes, field_number: int, *, limit: int, max_fields: int) -> int:
    """How often top-level field `field_number` occurs in `data`, or `limit + 1` once
    it occurs more than `limit` times. WireError when the bytes are malformed or hold
    more than `max_fields` top-level fields. One-byte varints (nearly every tag and
    many lengths) are read inline: this runs on every batch entry."""
    count = 0
    fields = 0
    offset = 0
    end = len(data)
    while offset < end:
        fields += 1
        if fields > max_fields:
            raise WireError(f"more than {max_fields} top-level fields")
        tag = data[offset]
        if tag < 0x80:
            offset += 1
        else:
            tag, offset = _varint(data, offset)
        if tag >> 3 == 0:
            raise WireError("field number 0")
        wire_type = tag & 0x7
        if wire_type == _LENGTH_DELIMITED:
            if offset >= end:
                raise WireError("truncated length")
            length = data[offset]
            if length < 0x80:
                offset += 1
            else:
                length, offset = _varint(data, offset)
            offset += length
        elif wire_type == _VARINT:
            _, offset = _varint(data, offset)
        elif wire_type == _FIXED64:
            offset += 8
        elif wire_type == _FIXED32:
            offset += 4
        else:
            raise WireError(f"wire type {wire_type}")
        if offset > end:
            raise WireError("field runs past the end")
        if tag >> 3 == field_number:
            count += 1
            if count > limit:
                return count
    return count
