"""Atomic JSON persistence of the agent's state (for restart without disruption)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write state atomically (temp file + rename), readable by root only.

    Compact JSON: without `indent` the C encoder is used, several times faster on the
    state of a thousand endpoints (the file is written after every change)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(state, sort_keys=True, separators=(",", ":")))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def load_state(path: Path) -> dict[str, Any] | None:
    """Read state written by save_state, or None if there is none."""
    try:
        with open(path) as f:
            data: dict[str, Any] = json.load(f)
            return data
    except FileNotFoundError:
        return None
