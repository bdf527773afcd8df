"""Replay on disk: one safetensors file of arrays, JSON for the scalars, no code.

The file is written beside its destination, flushed to disk and renamed over it, so a
crash leaves either the previous file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

FORMAT = "tamiyo-replay-v1"


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def save_state(path: Path, parts: Mapping[str, Stateful]) -> int:
    """Write every part's state to ``path`` atomically; the bytes written."""
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    for prefix, part in parts.items():
        for key, value in part.state_dict().items():
            name = f"{prefix}/{key}"
            if isinstance(value, np.ndarray):
                arrays[name] = np.ascontiguousarray(value)
            else:
                scalars[name] = value
    blob = save(arrays, metadata={"format": FORMAT, "scalars": json.dumps(scalars)})
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        out.write(blob)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return len(blob)


def load_state(path: Path, parts: Mapping[str, Stateful]) -> None:
    """Load what :func:`save_state` wrote into ``parts`` (the same prefixes)."""
    with safe_open(str(path), framework="numpy") as stored:
        metadata = stored.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file")
        state: dict[str, Any] = {k: stored.get_tensor(k) for k in stored.keys()}  # noqa: SIM118
    state.update(json.loads(metadata["scalars"]))
    for prefix, part in parts.items():
        head = f"{prefix}/"
        part.load_state_dict({k[len(head) :]: v for k, v in state.items() if k.startswith(head)})
