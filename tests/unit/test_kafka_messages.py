"""Kafka request parsing and denial responses, checked against kafka-python's own codec."""

from __future__ import annotations

import struct
import uuid
from typing import Any

import pytest

from cilia.proxy.kafka import schemas as k
from cilia.proxy.kafka.codec import DecodeError, Reader, Writer
from cilia.proxy.kafka.messages import cap_api_versions, deny_response, is_flexible, parse_request
from cilia.proxy.kafka.schema import decode

kp = pytest.importorskip("kafka.protocol")
from kafka.protocol.consumer.fetch import FetchRequest, FetchResponse  # noqa: E402
from kafka.protocol.consumer.group import (  # noqa: E402
    HeartbeatRequest,
    HeartbeatResponse,
    JoinGroupRequest,
    JoinGroupResponse,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetFetchRequest,
    OffsetFetchResponse,
)
from kafka.protocol.consumer.offsets import ListOffsetsRequest, ListOffsetsResponse  # noqa: E402
from kafka.protocol.metadata.api_versions import ApiVersionsRequest, ApiVersionsResponse  # noqa: E402
from kafka.protocol.metadata.find_coordinator import (  # noqa: E402
    FindCoordinatorRequest,
    FindCoordinatorResponse,
)
from kafka.protocol.metadata.metadata import MetadataRequest, MetadataResponse  # noqa: E402
from kafka.protocol.producer.produce import ProduceRequest, ProduceResponse  # noqa: E402


def _build(cls: Any, version: int | None = None, **fields: Any) -> Any:
    """A kafka-python message from plain dicts (nested structs built recursively)."""
    out = {}
    for name, value in fields.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            sub = cls._struct.fields[name].data_class
            value = [_build(sub, **v) for v in value]
        out[name] = value
    return cls(version=version, **out) if version is not None else cls(**out)


def _request(
    cls: Any, version: int, correlation_id: int = 42, client_id: str | None = "cid", **fields: Any
) -> bytes:
    msg = _build(cls, version, **fields)
    msg.with_header(correlation_id=correlation_id, client_id=client_id)
    data: bytes = msg.encode(header=True)
    return data


def _assert_consumed(frame: bytes) -> None:
    """The schema reads exactly the whole body kafka-python wrote."""
    r = Reader(frame)
    api_key, version = r.int16(), r.int16()
    r.int32()
    r.string(False)
    flexible = is_flexible(api_key, version)
    if flexible:
        r.tagged_fields()
    decode(k.REQUESTS[api_key], r, version, flexible)
    assert r.remaining == 0


TWO_TOPICS = [
    {
        "name": "empire-announce",
        "partition_data": [{"index": 0, "records": b"abc"}, {"index": 1, "records": None}],
    },
    {"name": "deathstar-plans", "partition_data": [{"index": 0, "records": b"x"}]},
]


@pytest.mark.parametrize("version", [3, 5, 7, 8, 9, 11, 12])
def test_produce_topics_and_denial(version: int) -> None:
    frame = _request(
        ProduceRequest,
        version,
        transactional_id=None,
        acks=1,
        timeout_ms=500,
        topic_data=TWO_TOPICS,
    )
    _assert_consumed(frame)
    req = parse_request(frame)
    assert (req.api_key, req.api_version, req.correlation_id, req.client_id) == (
        0,
        version,
        42,
        "cid",
    )
    assert req.topics == ("empire-announce", "deathstar-plans")
    assert req.expects_response
    resp = ProduceResponse.decode(deny_response(req), version=version, header=True, framed=True)
    assert resp._header.correlation_id == 42
    assert [t.name for t in resp.responses] == ["empire-announce", "deathstar-plans"]
    errors = [(p.index, p.error_code) for t in resp.responses for p in t.partition_responses]
    assert errors == [(0, 29), (1, 29), (0, 29)]


def test_produce_acks_zero_expects_no_response() -> None:
    frame = _request(
        ProduceRequest, 7, transactional_id=None, acks=0, timeout_ms=1, topic_data=TWO_TOPICS
    )
    assert not parse_request(frame).expects_response


@pytest.mark.parametrize("version", [4, 7, 10, 11, 12])
def test_fetch(version: int) -> None:
    topics = [
        {
            "topic": "t1",
            "partitions": [{"partition": 0, "fetch_offset": 5, "partition_max_bytes": 1000}],
        }
    ]
    frame = _request(
        FetchRequest,
        version,
        replica_id=-1,
        max_wait_ms=100,
        min_bytes=1,
        max_bytes=10000,
        topics=topics,
    )
    _assert_consumed(frame)
    req = parse_request(frame)
    assert req.topics == ("t1",)
    resp = FetchResponse.decode(deny_response(req), version=version, header=True, framed=True)
    assert resp._header.correlation_id == 42
    assert [
        (t.topic, p.partition_index, p.error_code) for t in resp.responses for p in t.partitions
    ] == [("t1", 0, 29)]


@pytest.mark.parametrize("version", [1, 2, 4, 6, 7, 9, 10])
def test_list_offsets(version: int) -> None:
    topics = [{"name": "t2", "partitions": [{"partition_index": 3, "timestamp": -1}]}]
    frame = _request(ListOffsetsRequest, version, replica_id=-1, topics=topics)
    _assert_consumed(frame)
    req = parse_request(frame)
    assert req.topics == ("t2",)
    resp = ListOffsetsResponse.decode(deny_response(req), version=version, header=True, framed=True)
    assert [(p.partition_index, p.error_code) for t in resp.topics for p in t.partitions] == [
        (3, 29)
    ]


@pytest.mark.parametrize("version", [0, 1, 4, 5, 8, 9, 11, 12])
def test_metadata(version: int) -> None:
    frame = _request(MetadataRequest, version, topics=[{"name": "a"}, {"name": "b"}])
    _assert_consumed(frame)
    req = parse_request(frame)
    assert req.topics == ("a", "b")
    resp = MetadataResponse.decode(deny_response(req), version=version, header=True, framed=True)
    assert [(t.name, t.error_code) for t in resp.topics] == [("a", 29), ("b", 29)]
    assert resp._header.correlation_id == 42


def test_metadata_for_all_topics_names_none() -> None:
    assert parse_request(_request(MetadataRequest, 1, topics=None)).topics == ()
    assert parse_request(_request(MetadataRequest, 0, topics=[])).topics == ()


@pytest.mark.parametrize("version", [2, 3, 5, 7, 8, 9])
def test_offset_commit(version: int) -> None:
    topics = [
        {
            "name": "t3",
            "partitions": [{"partition_index": 0, "committed_offset": 9, "committed_metadata": ""}],
        }
    ]
    frame = _request(OffsetCommitRequest, version, group_id="g", member_id="m", topics=topics)
    _assert_consumed(frame)
    req = parse_request(frame)
    assert req.topics == ("t3",)
    resp = OffsetCommitResponse.decode(
        deny_response(req), version=version, header=True, framed=True
    )
    assert [(p.partition_index, p.error_code) for t in resp.topics for p in t.partitions] == [
        (0, 29)
    ]


@pytest.mark.parametrize("version", [1, 3, 6, 7])
def test_offset_fetch_classic(version: int) -> None:
    frame = _request(
        OffsetFetchRequest,
        version,
        group_id="g",
        topics=[{"name": "t4", "partition_indexes": [0, 2]}],
    )
    _assert_consumed(frame)
    req = parse_request(frame)
    assert req.topics == ("t4",)
    resp = OffsetFetchResponse.decode(deny_response(req), version=version, header=True, framed=True)
    assert [(p.partition_index, p.error_code) for t in resp.topics for p in t.partitions] == [
        (0, 29),
        (2, 29),
    ]


@pytest.mark.parametrize("version", [8, 9])
def test_offset_fetch_groups(version: int) -> None:
    groups = [{"group_id": "g", "topics": [{"name": "t5", "partition_indexes": [1]}]}]
    frame = _request(OffsetFetchRequest, version, groups=groups)
    _assert_consumed(frame)
    req = parse_request(frame)
    assert req.topics == ("t5",)
    resp = OffsetFetchResponse.decode(deny_response(req), version=version, header=True, framed=True)
    assert [
        (p.partition_index, p.error_code)
        for g in resp.groups
        for t in g.topics
        for p in t.partitions
    ] == [(1, 29)]


@pytest.mark.parametrize("version", [0, 2, 3, 4, 5])
def test_find_coordinator(version: int) -> None:
    fields: dict[str, Any] = {"coordinator_keys": ["g1"]} if version >= 4 else {"key": "g1"}
    req = parse_request(_request(FindCoordinatorRequest, version, **fields))
    assert req.topics == ()
    resp = FindCoordinatorResponse.decode(
        deny_response(req), version=version, header=True, framed=True
    )
    if version >= 4:
        assert [(c.key, c.error_code) for c in resp.coordinators] == [("g1", 29)]
    else:
        assert resp.error_code == 29


@pytest.mark.parametrize(
    ("request_cls", "response_cls", "version", "fields"),
    [
        (
            JoinGroupRequest,
            JoinGroupResponse,
            5,
            {"group_id": "g", "member_id": "", "protocol_type": "consumer"},
        ),
        (
            JoinGroupRequest,
            JoinGroupResponse,
            7,
            {"group_id": "g", "member_id": "", "protocol_type": "consumer"},
        ),
        (HeartbeatRequest, HeartbeatResponse, 4, {"group_id": "g", "member_id": "m"}),
        (HeartbeatRequest, HeartbeatResponse, 1, {"group_id": "g", "member_id": "m"}),
        (
            ApiVersionsRequest,
            ApiVersionsResponse,
            3,
            {"client_software_name": "x", "client_software_version": "1"},
        ),
        (ApiVersionsRequest, ApiVersionsResponse, 0, {}),
    ],
)
def test_topicless_denials(
    request_cls: Any, response_cls: Any, version: int, fields: dict[str, Any]
) -> None:
    req = parse_request(_request(request_cls, version, correlation_id=7, **fields))
    assert req.topics == ()
    resp = response_cls.decode(deny_response(req), version=version, header=True, framed=True)
    assert resp.error_code == 29
    assert resp._header.correlation_id == 7


def test_null_client_id_and_header_v2() -> None:
    req = parse_request(_request(MetadataRequest, 12, client_id=None, topics=[{"name": "x"}]))
    assert req.client_id is None
    assert req.topics == ("x",)


def test_topic_by_id_is_unknown() -> None:
    frame = _request(MetadataRequest, 12, topics=[{"topic_id": uuid.UUID(int=1), "name": None}])
    assert parse_request(frame).topics is None


def test_unsupported_version_has_unknown_topics_and_no_denial() -> None:
    w = Writer()
    for value in (0, 13, 1):
        w.int16(value) if value != 1 else w.int32(value)
    w.string("c", False)
    req = parse_request(w.getvalue() + b"\x00" * 20)
    assert req.topics is None
    assert deny_response(req) is None


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00\x00",
        struct.pack(">hhi", 0, 9, 1),  # no client id
        struct.pack(">hhih", 3, 1, 1, 50) + b"abc",  # client id longer than the frame
        struct.pack(">hhih", -1, 0, 1, -1),  # negative api key
        struct.pack(">hhih", 3, 1, 1, -1)
        + struct.pack(">i", 1_000_000),  # array longer than the frame
        struct.pack(">hhih", 0, 7, 1, -1) + b"\x00",  # truncated produce body
    ],
)
def test_malformed_requests_raise(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_request(frame)


def test_api_versions_capped_in_place() -> None:
    keys = [
        {"api_key": 0, "min_version": 0, "max_version": 13},
        {"api_key": 1, "min_version": 4, "max_version": 18},
        {"api_key": 42, "min_version": 0, "max_version": 3},
    ]
    for version in (0, 2, 3, 4):
        msg = _build(ApiVersionsResponse, version, error_code=0, api_keys=keys)
        body: bytes = msg.encode()
        capped = cap_api_versions(body, version, k.MAX_VERSION)
        assert len(capped) == len(body)
        out = ApiVersionsResponse.decode(capped, version=version)
        assert [(a.api_key, a.min_version, a.max_version) for a in out.api_keys] == [
            (0, 0, 12),
            (1, 4, 12),
            (42, 0, 3),
        ]
    assert cap_api_versions(b"\x00", 0, k.MAX_VERSION) == b"\x00"
