"""Kafka requests as the proxy sees them: header, topics, denial responses, version capping."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cilia.proxy.kafka import schemas as k
from cilia.proxy.kafka.codec import DecodeError, Reader, Writer
from cilia.proxy.kafka.schema import Value, decode, encode

MAX_FRAME = 100 * 1024 * 1024
"""Largest request accepted (Kafka's default socket.request.max.bytes)."""


@dataclass(frozen=True)
class KafkaRequest:
    """One request: header fields, the topics it names and the raw frame (without its size)."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    topics: tuple[str, ...] | None
    """Topics named by the request; () when it names none, None when they cannot be read."""
    body: Value | None
    frame: bytes

    @property
    def expects_response(self) -> bool:
        """False only for a produce request with acks=0."""
        return not (self.api_key == k.PRODUCE and self.body is not None and self.body["Acks"] == 0)


def is_flexible(api_key: int, version: int) -> bool:
    """Whether (key, version) uses compact encodings and tagged fields (for known keys)."""
    first = k.FLEXIBLE_FROM.get(api_key)
    return first is not None and version >= first


def parse_request(frame: bytes) -> KafkaRequest:
    """Parse a request frame (the bytes after the 4-byte size); raises DecodeError."""
    r = Reader(frame)
    api_key, api_version, correlation_id = r.int16(), r.int16(), r.int32()
    if api_key < 0 or api_version < 0:
        raise DecodeError(f"invalid api key {api_key} or version {api_version}")
    client_id = r.string(False)
    schema = k.REQUESTS.get(api_key)
    if schema is None or api_version > k.MAX_VERSION[api_key]:
        topics: tuple[str, ...] | None = () if api_key not in _TOPIC_KEYS else None
        return KafkaRequest(api_key, api_version, correlation_id, client_id, topics, None, frame)
    flexible = is_flexible(api_key, api_version)
    if flexible:
        r.tagged_fields()
    body = decode(schema, r, api_version, flexible)
    topics = _topics(api_key, api_version, body)
    return KafkaRequest(api_key, api_version, correlation_id, client_id, topics, body, frame)


_TOPIC_KEYS = frozenset(
    {k.PRODUCE, k.FETCH, k.LIST_OFFSETS, k.METADATA, k.OFFSET_COMMIT, k.OFFSET_FETCH}
)
_TOPIC_FIELD = {k.PRODUCE: ("TopicData", "Name"), k.FETCH: ("Topics", "Topic")}


def _topics(api_key: int, version: int, body: Value) -> tuple[str, ...] | None:
    if api_key not in _TOPIC_KEYS:
        return ()
    if api_key == k.OFFSET_FETCH and version >= 8:
        entries = [t for g in body["Groups"] for t in g["Topics"] or ()]
    else:
        array, _ = _TOPIC_FIELD.get(api_key, ("Topics", "Name"))
        entries = body[array] or []
    name = _TOPIC_FIELD.get(api_key, ("", "Name"))[1]
    names = [t[name] for t in entries]
    if any(n is None for n in names):
        return None  # a topic named by id only
    return tuple(dict.fromkeys(names))


def frame(payload: bytes) -> bytes:
    """Prefix a payload with its 4-byte size."""
    return struct.pack(">i", len(payload)) + payload


def deny_response(req: KafkaRequest, error: int = k.TOPIC_AUTHORIZATION_FAILED) -> bytes | None:
    """A framed response refusing `req` with `error`, or None if the proxy cannot write one."""
    schema = k.RESPONSES.get(req.api_key)
    if schema is None or req.api_version > k.MAX_VERSION[req.api_key]:
        return None
    if req.api_key in k.REQUESTS and req.body is None:
        return None
    w = Writer()
    w.int32(req.correlation_id)
    version = req.api_version
    if req.api_key == k.API_VERSIONS:
        version = 0  # an ApiVersions error response is always read as v0, header v0
    flexible = is_flexible(req.api_key, version)
    if flexible:
        w.uvarint(0)
    encode(schema, _deny_body(req, error), w, version, flexible)
    return frame(w.getvalue())


def _partitions(items: Iterable[Value], index: str, out: str, error: int) -> list[Value]:
    return [{out: p[index], "ErrorCode": error} for p in items]


def _deny_body(req: KafkaRequest, error: int) -> Value:
    body = req.body or {}
    key, version = req.api_key, req.api_version
    if key == k.PRODUCE:
        return {
            "Responses": [
                {
                    "Name": t["Name"],
                    "PartitionResponses": _partitions(t["PartitionData"], "Index", "Index", error),
                }
                for t in body["TopicData"]
            ]
        }
    if key == k.FETCH:
        return {
            "Responses": [
                {
                    "Topic": t["Topic"],
                    "Partitions": _partitions(
                        t["Partitions"], "Partition", "PartitionIndex", error
                    ),
                }
                for t in body["Topics"]
            ]
        }
    if key in (k.LIST_OFFSETS, k.OFFSET_COMMIT):
        return {
            "Topics": [
                {
                    "Name": t["Name"],
                    "Partitions": _partitions(
                        t["Partitions"], "PartitionIndex", "PartitionIndex", error
                    ),
                }
                for t in body["Topics"]
            ]
        }
    if key == k.METADATA:
        topics = [{"ErrorCode": error, "Name": name} for name in req.topics or ()]
        return {"Topics": topics, "ErrorCode": error}
    if key == k.OFFSET_FETCH:
        return _offset_fetch_denial(body, version, error)
    if key == k.FIND_COORDINATOR and version >= 4:
        return {
            "Coordinators": [{"Key": key_, "ErrorCode": error} for key_ in body["CoordinatorKeys"]]
        }
    return {"ErrorCode": error}


def _offset_fetch_topics(topics: Iterable[Value] | None, error: int) -> list[Value]:
    return [
        {
            "Name": t["Name"],
            "Partitions": [
                {"PartitionIndex": p, "ErrorCode": error} for p in t["PartitionIndexes"]
            ],
        }
        for t in topics or ()
    ]


def _offset_fetch_denial(body: Value, version: int, error: int) -> Value:
    if version >= 8:
        groups = [
            {
                "GroupId": g["GroupId"],
                "Topics": _offset_fetch_topics(g["Topics"], error),
                "ErrorCode": 0 if g["Topics"] else error,
            }
            for g in body["Groups"]
        ]
        return {"Groups": groups}
    topics = _offset_fetch_topics(body["Topics"], error)
    return {"Topics": topics, "ErrorCode": 0 if topics else error}


def cap_api_versions(payload: bytes, request_version: int, limits: dict[int, int]) -> bytes:
    """Lower MaxVersion in an ApiVersions response body (after the correlation id) to `limits`.

    Patched in place so every other byte (tagged fields, features) is kept. A
    response that does not parse is returned unchanged.
    """
    out = bytearray(payload)
    flexible = is_flexible(k.API_VERSIONS, request_version)
    r = Reader(payload)
    try:
        if r.int16() != 0:
            return payload
        for _ in range(r.length(flexible)):
            api_key, low = r.int16(), r.int16()
            at = r.pos
            high = r.int16()
            limit = limits.get(api_key)
            if limit is not None and high > limit:
                struct.pack_into(">h", out, at, max(limit, low))
            if flexible:
                r.tagged_fields()
    except DecodeError:
        return payload
    return bytes(out)
