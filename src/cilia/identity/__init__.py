"""Numeric security identities: reserved ones and locally allocated ones."""

from cilia.identity.allocator import IdentityAllocator, IdentityExhaustedError
from cilia.identity.reserved import (
    CLUSTER,
    HEALTH,
    HOST,
    INIT,
    MAX_IDENTITY,
    MIN_ALLOCATED,
    RESERVED_LABELS,
    RESERVED_NAMES,
    UNKNOWN,
    WORLD,
    is_reserved,
    reserved_identity,
)
from cilia.identity.source import IdentitySource

__all__ = [
    "CLUSTER",
    "HEALTH",
    "HOST",
    "INIT",
    "MAX_IDENTITY",
    "MIN_ALLOCATED",
    "RESERVED_LABELS",
    "RESERVED_NAMES",
    "UNKNOWN",
    "WORLD",
    "IdentityAllocator",
    "IdentityExhaustedError",
    "IdentitySource",
    "is_reserved",
    "reserved_identity",
]
