"""Stable categorical hashing and the digest of everything a policy's inputs mean.

Python's ``hash()`` is salted per process, so categorical ids (layer kinds, blueprint
ids) go through BLAKE2b instead: the same id lands in the same bucket in every
process, on every machine. The registry digest fingerprints the input schema (node
types, feature columns, hash buckets, relations, actions); a checkpoint trained under
another schema is refused instead of silently misreading its inputs.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache

from tamiyo_bus.policy.actions import ACTION_SPACE
from tamiyo_bus.policy.features import CLIP, FEATURE_SPECS, HASH_BUCKETS
from tamiyo_bus.policy.schema import NODE_TYPES, RELATIONS

HASH_FUNCTION = "blake2b-64"


@lru_cache(maxsize=65536)
def stable_hash(namespace: str, value: str) -> int:
    """A 64-bit hash of ``value`` within ``namespace``, identical in every process."""
    payload = namespace.encode("utf-8") + b"\x00" + value.encode("utf-8")
    digest = hashlib.blake2b(payload, digest_size=8).digest()
    return int.from_bytes(digest, "little")


def bucket(namespace: str, value: str, buckets: int = HASH_BUCKETS) -> int:
    """The one-hot column of ``value`` in a hashed categorical block."""
    return stable_hash(namespace, value) % buckets


def registry_description() -> dict[str, object]:
    """Everything that fixes how a packet becomes policy input, and what outputs mean."""
    return {
        "hash_function": HASH_FUNCTION,
        "hash_buckets": HASH_BUCKETS,
        "clip": CLIP,
        "node_types": list(NODE_TYPES),
        "features": {
            t: {
                "values": list(FEATURE_SPECS[t].values),
                "categorical": [list(c) for c in FEATURE_SPECS[t].categorical],
            }
            for t in NODE_TYPES
        },
        "relations": [list(r.key) for r in RELATIONS],
        "actions": [spec.name for spec in ACTION_SPACE],
    }


@lru_cache(maxsize=1)
def registry_digest() -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`registry_description`."""
    canonical = json.dumps(registry_description(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
