"""Envoy's access log, read in large chunks: exact counts per batch, records only on demand.

Envoy writes one JSON object per request (see `FORMAT`) with its keys in
alphabetical order, so the response details (which tell a denial) come before
the listener's name in every line. Counting a burst takes two regular
expression scans of the whole chunk; the full JSON decode of each line happens only when
somebody wants per-request records (a monitor client).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from cilia.proxy.records import Verdict

FORMAT = {
    "destination": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "host": "%REQ(:AUTHORITY)%",
    "listener": "",  # the listener's name, filled in per listener
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "source": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "status": "%RESPONSE_CODE%",
}
"""The json_format of every listener's access log (keys as Envoy orders them)."""

DENIED_DETAILS = "rbac_access_denied"

# JSON escapes quotes and newlines inside values, so a client-chosen host or path can
# neither end a line nor contain an unescaped `"listener":"` or `"details":"`.
_LISTENER = re.compile(rb'"listener":"([^"\\]*)"')
_DENIED = re.compile(rb'"details":"' + DENIED_DETAILS.encode() + rb'[^\n]*?"listener":"([^"\\]*)"')

Tally = Counter[tuple[str, Verdict]]
"""Requests per (listener name, verdict)."""


def listener_format(name: str) -> dict[str, str]:
    """The json_format of one listener's access log."""
    return {**FORMAT, "listener": name}


class LineBuffer:
    """Joins chunks of a byte stream and hands out complete lines only."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """Every complete line so far (newlines kept); a trailing partial line waits."""
        data = self._pending + chunk if self._pending else chunk
        cut = data.rfind(b"\n") + 1
        self._pending = data[cut:]
        return data[:cut]


def tally(lines: bytes) -> Tally:
    """Count the requests of a block of complete lines per (listener, verdict).

    Two scans of the block (every request, then the denied ones) instead of a
    decode per line.
    """
    total = Counter(_LISTENER.findall(lines))
    out: Tally = Counter()
    for name, n in Counter(_DENIED.findall(lines)).items():
        out[name.decode(), "denied"] = n
        total[name] -= n
    for name, n in total.items():
        if n:
            out[name.decode(), "forwarded"] = n
    return out


def entries(lines: bytes) -> list[dict[str, Any]]:
    """Decode every well-formed line of a block (a malformed one is skipped)."""
    out = []
    for line in lines.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def verdict_of(entry: dict[str, Any]) -> Verdict:
    """A decoded entry's verdict, by the same rule as `tally`."""
    return "denied" if str(entry.get("details", "")).startswith(DENIED_DETAILS) else "forwarded"
