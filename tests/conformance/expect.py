"""Expected truth tables of conformance cases, from a small rule language.

`expect` is a list of `{allow: MATCH}` or `{deny: MATCH}` items applied in order
to a table that starts all-allowed (the last matching item wins). A MATCH has
optional `from`, `to` (a peer `x/a`, a namespace `x/*`, `outside`, `host`, `*`,
or a list of these), `port` (80, 81 or a list), `proto` (TCP, UDP) and `family`
(4 or 6: the IP version probed). Missing fields match everything: an item without
`family` states the same for both families.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cilia.cli.matrix import Key


def _peer_matches(pattern: Any, peer: str) -> bool:
    if pattern is None or pattern == "*":
        return True
    if isinstance(pattern, list):
        return any(_peer_matches(p, peer) for p in pattern)
    text = str(pattern)
    if text.endswith("/*"):
        return peer.startswith(text[:-1])
    return peer == text


def _value_matches(pattern: Any, value: object) -> bool:
    if pattern is None or pattern == "*":
        return True
    if isinstance(pattern, list):
        return value in pattern
    return bool(pattern == value)


def matches(match: dict[str, Any], key: Key) -> bool:
    """Whether one MATCH covers a (from, to, port, proto, family) probe."""
    unknown = set(match) - {"from", "to", "port", "proto", "family"}
    if unknown:
        raise ValueError(f"unknown match fields {sorted(unknown)}")
    if match.get("family") not in (None, 4, 6):
        raise ValueError(f"family must be 4 or 6: {match['family']!r}")
    src, dst, port, proto, family = key
    return (
        _peer_matches(match.get("from"), src)
        and _peer_matches(match.get("to"), dst)
        and _value_matches(match.get("port"), port)
        and _value_matches(match.get("proto"), proto)
        and _value_matches(match.get("family"), family)
    )


def expected(items: list[dict[str, Any]], keys: Iterable[Key]) -> dict[Key, bool]:
    """The truth table `items` describe over `keys`."""
    table = dict.fromkeys(keys, True)
    for item in items:
        if len(item) != 1 or next(iter(item)) not in ("allow", "deny"):
            raise ValueError(f"expect item must be {{allow: ...}} or {{deny: ...}}: {item}")
        verdict = "allow" in item
        match = item.get("allow", item.get("deny")) or {}
        for key in table:
            if matches(match, key):
                table[key] = verdict
    return table
