"""Reserved numeric identities and their labels."""

from __future__ import annotations

from cilia.labels import SOURCE_RESERVED, Label, Labels

UNKNOWN = 0
HOST = 1
WORLD = 2
CLUSTER = 3
HEALTH = 4
INIT = 5
MIN_ALLOCATED = 256
MAX_IDENTITY = 65535

RESERVED_NAMES: dict[int, str] = {
    HOST: "host",
    WORLD: "world",
    CLUSTER: "cluster",
    HEALTH: "health",
    INIT: "init",
}

RESERVED_LABELS: dict[int, Labels] = {
    ident: Labels([Label(SOURCE_RESERVED, name)]) for ident, name in RESERVED_NAMES.items()
}
"""Labels of each reserved identity (e.g. 1 -> `reserved:host`)."""

_BY_LABELS: dict[Labels, int] = {labels: ident for ident, labels in RESERVED_LABELS.items()}


def reserved_identity(labels: Labels) -> int | None:
    """The reserved identity carrying exactly `labels`, if any."""
    return _BY_LABELS.get(labels)


def is_reserved(identity: int) -> bool:
    """True for identities below the allocated range."""
    return 0 <= identity < MIN_ALLOCATED
