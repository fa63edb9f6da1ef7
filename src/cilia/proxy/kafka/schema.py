"""A small declarative description of Kafka message bodies, versioned per field.

A message is a tuple of `Field`s; a value is a dict keyed by field name (arrays of
structs are lists of dicts). Tagged fields are skipped when reading and written
empty, so only the fields a proxy needs are described.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cilia.proxy.kafka.codec import DecodeError, Reader, Writer

_MISSING: Any = object()
_LAST = 0x7FFF

Struct = tuple["Field", ...]
Value = dict[str, Any]

MAX_ITEMS = 200_000
"""Most array elements one message may hold, all arrays together: far above what a
client sends a broker (partitions of one request), and a bound on what a hostile frame
costs, since an element of a byte or two becomes a dict of a few hundred bytes, and its
denial a kilobyte (~1000 times the frame otherwise, which may be 100 MiB)."""


def _range(text: str) -> tuple[int, int]:
    if text.endswith("+"):
        return int(text[:-1]), _LAST
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


@dataclass(frozen=True)
class Field:
    """One field: a primitive type name or a struct, present in versions lo..hi."""

    name: str
    type: str | Struct
    versions: tuple[int, int]
    nullable: tuple[int, int] | None = None
    default: Any = _MISSING
    array: bool = False

    def present(self, version: int) -> bool:
        return self.versions[0] <= version <= self.versions[1]

    def is_nullable(self, version: int) -> bool:
        return self.nullable is not None and self.nullable[0] <= version <= self.nullable[1]


def f(
    name: str, typ: str, versions: str = "0+", *, null: str | None = None, default: Any = _MISSING
) -> Field:
    """A primitive field (or an array of primitives with a `[]` prefix)."""
    array = typ.startswith("[]")
    return Field(
        name,
        typ.removeprefix("[]"),
        _range(versions),
        _range(null) if null else None,
        default,
        array,
    )


def arr(name: str, fields: Struct, versions: str = "0+", *, null: str | None = None) -> Field:
    """An array of structs."""
    return Field(name, fields, _range(versions), _range(null) if null else None, _MISSING, True)


def decode(fields: Struct, r: Reader, version: int, flexible: bool) -> Value:
    """Read one struct of the given version."""
    out: Value = {}
    for fld in fields:
        if fld.present(version):
            out[fld.name] = _read_field(fld, r, version, flexible)
    if flexible:
        r.tagged_fields()
    return out


def _read_field(fld: Field, r: Reader, version: int, flexible: bool) -> Any:
    if not fld.array:
        return _read_one(fld.type, r, version, flexible)
    n = r.length(flexible)
    if n < 0:
        if not fld.is_nullable(version):
            raise DecodeError(f"null array {fld.name} is not nullable")
        return None
    if n > r.remaining:
        raise DecodeError(f"array {fld.name} claims {n} items with {r.remaining} bytes left")
    r.items += n
    if r.items > MAX_ITEMS:
        raise DecodeError(f"more than {MAX_ITEMS} array elements (array {fld.name})")
    return [_read_one(fld.type, r, version, flexible) for _ in range(n)]


def _read_one(typ: str | Struct, r: Reader, version: int, flexible: bool) -> Any:
    if not isinstance(typ, str):
        return decode(typ, r, version, flexible)
    match typ:
        case "int8":
            return r.int8()
        case "bool":
            return r.int8() != 0
        case "int16":
            return r.int16()
        case "int32":
            return r.int32()
        case "int64":
            return r.int64()
        case "uuid":
            return r.take(16)
        case "string":
            return r.string(flexible)
        case "bytes" | "records":
            return r.bytes_(flexible)
    raise AssertionError(f"unknown type {typ}")


def encode(fields: Struct, value: Value, w: Writer, version: int, flexible: bool) -> None:
    """Write one struct of the given version; absent fields take their defaults."""
    for fld in fields:
        if fld.present(version):
            item = value.get(fld.name, _MISSING)
            if item is _MISSING:
                item = _zero(fld, version)
            _write_field(fld, item, w, version, flexible)
    if flexible:
        w.uvarint(0)


def _zero(fld: Field, version: int) -> Any:
    if fld.default is not _MISSING:
        return fld.default
    if fld.array:
        return []
    if fld.type in ("string", "bytes", "records") and fld.is_nullable(version):
        return None
    return {"string": "", "bytes": b"", "records": b"", "uuid": bytes(16), "bool": False}.get(
        fld.type if isinstance(fld.type, str) else "", 0
    )


def _write_field(fld: Field, item: Any, w: Writer, version: int, flexible: bool) -> None:
    if not fld.array:
        _write_one(fld.type, item, w, version, flexible)
        return
    if item is None:
        w.length(-1, flexible)
        return
    w.length(len(item), flexible)
    for element in item:
        _write_one(fld.type, element, w, version, flexible)


def _write_one(typ: str | Struct, item: Any, w: Writer, version: int, flexible: bool) -> None:
    if not isinstance(typ, str):
        encode(typ, item, w, version, flexible)
        return
    match typ:
        case "int8" | "bool":
            w.int8(int(item))
        case "int16":
            w.int16(item)
        case "int32":
            w.int32(item)
        case "int64":
            w.int64(item)
        case "uuid":
            w.raw(item)
        case "string":
            w.string(item, flexible)
        case "bytes" | "records":
            w.bytes_(item, flexible)
        case _:
            raise AssertionError(f"unknown type {typ}")
