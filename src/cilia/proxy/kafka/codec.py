"""Kafka wire primitives: a bounds-checked reader and a writer (classic and compact forms)."""

from __future__ import annotations

import struct

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


class DecodeError(ValueError):
    """The bytes are not a well-formed Kafka message of the expected shape."""


class Reader:
    """Reads Kafka primitives from a buffer; every read checks bounds."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.pos = offset
        self.items = 0
        """Array elements read so far (see `schema.MAX_ITEMS`)."""

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DecodeError(f"truncated: need {n} bytes at {self.pos}, have {self.remaining}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def _unpack(self, fmt: struct.Struct) -> int:
        value: int = fmt.unpack(self.take(fmt.size))[0]
        return value

    def int8(self) -> int:
        return self._unpack(_I8)

    def int16(self) -> int:
        return self._unpack(_I16)

    def int32(self) -> int:
        return self._unpack(_I32)

    def int64(self) -> int:
        return self._unpack(_I64)

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise DecodeError("varint too long")

    def length(self, compact: bool) -> int:
        """A string/bytes/array length; -1 means null."""
        return self.uvarint() - 1 if compact else self.int32()

    def string(self, compact: bool, *, short: bool = True) -> str | None:
        """A (nullable) string: int16 length (classic) or uvarint length+1 (compact)."""
        n = self.uvarint() - 1 if compact else (self.int16() if short else self.int32())
        if n < 0:
            return None
        try:
            return self.take(n).decode()
        except UnicodeDecodeError as err:
            raise DecodeError(f"invalid UTF-8 in string: {err}") from err

    def bytes_(self, compact: bool) -> bytes | None:
        n = self.length(compact)
        return None if n < 0 else self.take(n)

    def tagged_fields(self) -> None:
        """Skip a tagged-field section (flexible versions)."""
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())


class Writer:
    """Appends Kafka primitives to a buffer."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def raw(self, data: bytes) -> None:
        self.parts.append(data)

    def int8(self, v: int) -> None:
        self.parts.append(_I8.pack(v))

    def int16(self, v: int) -> None:
        self.parts.append(_I16.pack(v))

    def int32(self, v: int) -> None:
        self.parts.append(_I32.pack(v))

    def int64(self, v: int) -> None:
        self.parts.append(_I64.pack(v))

    def uvarint(self, v: int) -> None:
        out = bytearray()
        while True:
            byte = v & 0x7F
            v >>= 7
            if v:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                break
        self.parts.append(bytes(out))

    def length(self, n: int, compact: bool) -> None:
        if compact:
            self.uvarint(n + 1)
        else:
            self.int32(n)

    def string(self, v: str | None, compact: bool) -> None:
        if v is None:
            self.uvarint(0) if compact else self.int16(-1)
            return
        data = v.encode()
        self.uvarint(len(data) + 1) if compact else self.int16(len(data))
        self.parts.append(data)

    def bytes_(self, v: bytes | None, compact: bool) -> None:
        if v is None:
            self.length(-1, compact)
            return
        self.length(len(v), compact)
        self.parts.append(v)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)
