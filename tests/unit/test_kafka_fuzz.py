"""Property-based tests of the Kafka request parser and of a running proxy fed garbage.

Whatever the bytes, `parse_request` returns a request or raises `DecodeError`; what the
proxy does next with a parsed request (verdict, denial, response-order bookkeeping)
never raises either, and memory stays proportional to the frame, whatever counts and
lengths it claims. Well-formed requests, written by our schema writer and by
kafka-python's independent codec, parse back to their header and topics.
A running proxy keeps serving new connections after any garbage on another.

Bounded by the hypothesis profile (tests/conftest.py); `HYPOTHESIS_PROFILE=long` for
a long run.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cilia.policy.desired import L7Allow
from cilia.policy.l7 import PortRuleKafka
from cilia.proxy.kafka import schemas as k
from cilia.proxy.kafka.codec import DecodeError, Writer
from cilia.proxy.kafka.messages import (
    KafkaRequest,
    cap_api_versions,
    deny_response,
    is_flexible,
    parse_request,
)
from cilia.proxy.kafka.policy import KafkaPolicy
from cilia.proxy.kafka.proxy import KafkaProxy
from cilia.proxy.kafka.schema import MAX_ITEMS, Field, Struct, encode
from cilia.proxy.loop import LoopThread

INT16 = st.integers(-(2**15), 2**15 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
KEYS = sorted(k.MAX_VERSION)
HOSTILE_INT32 = st.sampled_from([-(2**31), -2, -1, 0, 1, 2**15, 2**31 - 1])


def scaled(share: float, **kwargs: Any) -> settings:
    """A share of the profile's examples, for tests that cost more per example."""
    return settings(max_examples=max(10, int(settings.default.max_examples * share)), **kwargs)


POLICIES = [
    KafkaPolicy([L7Allow(7)]),  # every request allowed
    KafkaPolicy([L7Allow(7, kafka=(PortRuleKafka(role="produce", topic="allowed"),))]),
    KafkaPolicy([L7Allow(7, kafka=(PortRuleKafka(apiKey="metadata", clientID="c"),))]),
    KafkaPolicy([L7Allow(7, kafka=(PortRuleKafka(role="consume"),))]),
]


def handle(frame: bytes) -> KafkaRequest | None:
    """What the proxy does with one frame: parse, judge, answer a denial. None when the
    frame is malformed; any other exception is a bug."""
    try:
        req = parse_request(frame)
    except DecodeError:
        return None
    assert req.frame == frame
    assert 0 <= req.api_key < 2**15 and 0 <= req.api_version < 2**15
    assert req.topics is None or all(isinstance(t, str) for t in req.topics)
    for policy in POLICIES:
        policy.allows(7, req)
    req.expects_response  # noqa: B018 (a property that reads the body)
    response = deny_response(req)
    if response is not None:
        (size,) = struct.unpack(">i", response[:4])
        assert size == len(response) - 4
        assert struct.unpack(">i", response[4:8])[0] == req.correlation_id
    return req


# --- hostile frames ------------------------------------------------------------------


def _token() -> st.SearchStrategy[bytes]:
    """One primitive as a hostile client writes it: extreme ints and lengths, runs of
    continuation bytes (huge varints), random bytes."""
    return st.one_of(
        HOSTILE_INT32.map(lambda v: struct.pack(">i", v)),
        st.sampled_from([-(2**15), -2, -1, 0, 1, 2**15 - 1]).map(lambda v: struct.pack(">h", v)),
        st.sampled_from([b"\x00", b"\x01", b"\x02", b"\x7f", b"\xff\xff\xff\xff\x0f"]),
        st.integers(1, 6).map(lambda n: b"\xff" * n),
        INT32.map(lambda v: struct.pack(">i", v)),
        st.binary(max_size=12),
    )


@st.composite
def hostile_frames(draw: st.DrawFn) -> bytes:
    """A header for a known (or random) key and version, then a body of hostile tokens."""
    api_key = draw(st.sampled_from(KEYS) | INT16)
    top = k.MAX_VERSION.get(api_key, 20)
    version = draw(st.integers(0, top) | INT16)
    head = struct.pack(">hhi", api_key, version, draw(INT32))
    client = draw(
        st.one_of(
            st.text(max_size=10).map(lambda s: struct.pack(">h", len(s.encode())) + s.encode()),
            st.sampled_from([-(2**15), -2, -1, 2**15 - 1]).map(lambda n: struct.pack(">h", n)),
        )
    )
    body = b"".join(draw(st.lists(_token(), max_size=24)))
    return head + client + body


@given(st.binary(max_size=512))
def test_arbitrary_bytes_parse_or_raise_decode_error(frame: bytes) -> None:
    handle(frame)


@given(hostile_frames())
def test_hostile_frames_parse_or_raise_decode_error(frame: bytes) -> None:
    handle(frame)


# --- well-formed requests, from the schema ---------------------------------------------


def _primitive(fld: Field, version: int) -> st.SearchStrategy[Any]:
    typ = fld.type
    assert isinstance(typ, str)
    base: st.SearchStrategy[Any] = {
        "int8": st.integers(-128, 127),
        "bool": st.booleans(),
        "int16": INT16,
        "int32": INT32,
        "int64": st.integers(-(2**63), 2**63 - 1),
        "uuid": st.binary(min_size=16, max_size=16),
        "string": st.text(max_size=12),
        "bytes": st.binary(max_size=16),
        "records": st.binary(max_size=16),
    }[typ]
    if typ in ("string", "bytes", "records") and fld.is_nullable(version):
        base = st.none() | base
    return base


def _struct(fields: Struct, version: int) -> st.SearchStrategy[dict[str, Any]]:
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for fld in fields:
        if not fld.present(version):
            continue
        one = (
            _struct(fld.type, version)
            if not isinstance(fld.type, str)
            else _primitive(fld, version)
        )
        if fld.array:
            many: st.SearchStrategy[Any] = st.lists(one, max_size=3)
            one = st.none() | many if fld.is_nullable(version) else many
        parts[fld.name] = one
    return st.fixed_dictionaries(parts)


@st.composite
def requests(draw: st.DrawFn) -> tuple[int, int, int, str | None, dict[str, Any], bytes]:
    """(key, version, correlation id, client id, body, frame) of a well-formed request."""
    api_key = draw(st.sampled_from(sorted(k.REQUESTS)))
    version = draw(st.integers(0, k.MAX_VERSION[api_key]))
    correlation = draw(INT32)
    client = draw(st.none() | st.text(max_size=12))
    body = draw(_struct(k.REQUESTS[api_key], version))
    w = Writer()
    w.int16(api_key)
    w.int16(version)
    w.int32(correlation)
    w.string(client, False)
    flexible = is_flexible(api_key, version)
    if flexible:
        w.uvarint(0)
    encode(k.REQUESTS[api_key], body, w, version, flexible)
    return api_key, version, correlation, client, body, w.getvalue()


def expected_topics(api_key: int, version: int, body: dict[str, Any]) -> tuple[str, ...] | None:
    """The topics a request names, written out per key (independently of the parser)."""
    if api_key == k.PRODUCE:
        names = [t["Name"] for t in body["TopicData"]]
    elif api_key == k.FETCH:
        names = [t["Topic"] for t in body["Topics"]]
    elif api_key == k.OFFSET_FETCH and version >= 8:
        names = [t["Name"] for g in body["Groups"] for t in g["Topics"] or []]
    elif api_key in (k.LIST_OFFSETS, k.METADATA, k.OFFSET_COMMIT, k.OFFSET_FETCH):
        names = [t["Name"] for t in body["Topics"] or []]
    else:
        return ()
    if None in names:
        return None
    return tuple(dict.fromkeys(names))


@given(requests())
def test_well_formed_requests_round_trip(
    case: tuple[int, int, int, str | None, dict[str, Any], bytes],
) -> None:
    api_key, version, correlation, client, body, frame = case
    req = handle(frame)
    assert req is not None
    assert (req.api_key, req.api_version, req.correlation_id, req.client_id) == (
        api_key,
        version,
        correlation,
        client,
    )
    assert req.body == body
    assert req.topics == expected_topics(api_key, version, body)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A well-formed request, then truncated, or with a byte or an int32 overwritten."""
    frame = bytearray(draw(requests())[5])
    at = draw(st.integers(0, len(frame)))
    how = draw(st.sampled_from(["truncate", "byte", "int32", "insert"]))
    if how == "truncate":
        return bytes(frame[:at])
    if how == "byte" and at < len(frame):
        frame[at] = draw(st.integers(0, 255))
    elif how == "int32":
        frame[at : at + 4] = struct.pack(">i", draw(HOSTILE_INT32))
    else:
        frame[at:at] = draw(_token())
    return bytes(frame)


@given(mutated())
def test_mutated_requests_parse_or_raise_decode_error(frame: bytes) -> None:
    handle(frame)


# --- well-formed requests, from kafka-python's codec ------------------------------------

TOPIC = st.text(min_size=1, max_size=40)
TOPICS = st.lists(TOPIC, min_size=1, max_size=4)


def _kp_request(name: str, version: int, correlation: int, client: str, **fields: Any) -> bytes:
    """A request written by kafka-python (nested dicts become its structs)."""
    module = {
        "ProduceRequest": "kafka.protocol.producer.produce",
        "FetchRequest": "kafka.protocol.consumer.fetch",
        "MetadataRequest": "kafka.protocol.metadata.metadata",
    }[name]
    cls = getattr(pytest.importorskip(module), name)

    def build(c: Any, version: int | None, values: dict[str, Any]) -> Any:
        out = {}
        for key, value in values.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                sub = c._struct.fields[key].data_class
                value = [build(sub, None, v) for v in value]
            out[key] = value
        return c(version=version, **out) if version is not None else c(**out)

    msg = build(cls, version, fields)
    msg.with_header(correlation_id=correlation, client_id=client)
    data: bytes = msg.encode(header=True)
    return data


@given(st.sampled_from([3, 5, 7, 8, 9, 11, 12]), TOPICS, INT32, st.text(max_size=10))
def test_kafka_python_produce_parses_to_its_topics(
    version: int, topics: list[str], correlation: int, client: str
) -> None:
    data = [{"name": t, "partition_data": [{"index": 0, "records": b"r"}]} for t in topics]
    frame = _kp_request(
        "ProduceRequest",
        version,
        correlation,
        client,
        transactional_id=None,
        acks=1,
        timeout_ms=5,
        topic_data=data,
    )
    req = handle(frame)
    assert req is not None
    assert (req.api_key, req.api_version, req.correlation_id) == (k.PRODUCE, version, correlation)
    assert req.topics == tuple(dict.fromkeys(topics))


@given(st.sampled_from([4, 7, 10, 11, 12]), TOPICS, INT32)
def test_kafka_python_fetch_parses_to_its_topics(
    version: int, topics: list[str], correlation: int
) -> None:
    parts = [{"partition": 0, "fetch_offset": 1, "partition_max_bytes": 9}]
    frame = _kp_request(
        "FetchRequest",
        version,
        correlation,
        "c",
        replica_id=-1,
        max_wait_ms=1,
        min_bytes=1,
        max_bytes=9,
        topics=[{"topic": t, "partitions": parts} for t in topics],
    )
    req = handle(frame)
    assert req is not None
    assert (req.api_key, req.api_version) == (k.FETCH, version)
    assert req.topics == tuple(dict.fromkeys(topics))


@given(st.sampled_from([0, 1, 4, 5, 8, 9, 11, 12]), TOPICS, INT32)
def test_kafka_python_metadata_parses_to_its_topics(
    version: int, topics: list[str], correlation: int
) -> None:
    frame = _kp_request(
        "MetadataRequest", version, correlation, "c", topics=[{"name": t} for t in topics]
    )
    req = handle(frame)
    assert req is not None
    assert (req.api_key, req.api_version) == (k.METADATA, version)
    assert req.topics == tuple(dict.fromkeys(topics))


# --- memory: proportional to the frame, never to what it claims -------------------------


def _claims(api_key: int, version: int, count: int) -> bytes | None:
    """A request whose first array claims `count` items; None if the version has none."""
    fields = [f for f in k.REQUESTS[api_key] if f.present(version)]
    arrays = [i for i, f in enumerate(fields) if f.array]
    if not arrays:
        return None
    w = Writer()
    w.int16(api_key)
    w.int16(version)
    w.int32(1)
    w.string("c", False)
    flexible = is_flexible(api_key, version)
    if flexible:
        w.uvarint(0)
    before = Writer()
    encode(tuple(fields[: arrays[0]]), {}, before, version, flexible)  # zero values
    w.raw(before.getvalue()[:-1] if flexible else before.getvalue())  # no tagged fields
    w.length(count, flexible)
    return w.getvalue() + b"\x00" * 64


@pytest.mark.parametrize("api_key", sorted(k.REQUESTS))
def test_huge_claimed_counts_allocate_nothing(api_key: int) -> None:
    for version in range(k.MAX_VERSION[api_key] + 1):
        flexible = is_flexible(api_key, version)
        for count in (2**31 - 1, 2**34) if flexible else (2**31 - 1,):
            frame = _claims(api_key, version, count)
            if frame is None:
                continue
            peak = _peak_memory(frame)
            assert peak < 256 * 1024, (api_key, version, count, peak)


@scaled(0.3)
@given(st.one_of(hostile_frames(), mutated()))
def test_memory_is_proportional_to_the_frame(frame: bytes) -> None:
    peak = _peak_memory(frame)
    # at worst an element of one byte becomes a dict and a denial of about a kilobyte
    assert peak < 64 * 1024 + 2048 * len(frame), (len(frame), peak)


def _coordinator_keys(n: int) -> bytes:
    """FindCoordinator v4 with `n` null keys: one byte per element, the cheapest frame."""
    w = Writer()
    w.int16(k.FIND_COORDINATOR)
    w.int16(4)
    w.int32(1)
    w.string("c", False)
    w.uvarint(0)
    w.int8(0)
    w.length(n, True)
    w.raw(b"\x00" * n)
    w.uvarint(0)
    return w.getvalue()


def test_element_budget_bounds_a_request() -> None:
    """About a kilobyte per element parsed and denied, at most MAX_ITEMS elements: without
    the budget a 100 MiB frame of such elements would cost ~100 GB."""
    with pytest.raises(DecodeError, match="array elements"):
        parse_request(_coordinator_keys(MAX_ITEMS + 1))
    req = parse_request(_coordinator_keys(MAX_ITEMS))
    assert req.body is not None and len(req.body["CoordinatorKeys"]) == MAX_ITEMS
    n = 5000
    tracemalloc.start()
    try:
        handle(_coordinator_keys(n))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2048 * n, peak


@given(st.binary(max_size=256), st.integers(0, 5))
def test_api_versions_capping_never_fails(payload: bytes, version: int) -> None:
    """Responses from upstream: capping keeps the length, never raises."""
    assert len(cap_api_versions(payload, version, k.MAX_VERSION)) == len(payload)


# --- a running proxy in front of a tiny fake broker (loopback) -------------------------


class FakeBroker:
    """Answers every frame with one frame: the correlation id and a zero error code
    (an ApiVersions v0 response with no keys)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack(">i", await reader.readexactly(4))
                data = await reader.readexactly(size)
                payload = data[4:8] + struct.pack(">hi", 0, 0)
                writer.write(struct.pack(">i", len(payload)) + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class Proxied:
    def __init__(self) -> None:
        self.loop = LoopThread("test-kafka-fuzz")
        self.loop.start()
        self.broker = FakeBroker()
        self.loop.call(self.broker.start())
        rules = (
            PortRuleKafka(apiKey="apiversions"),
            PortRuleKafka(role="produce", topic="allowed"),
        )
        self.proxy = KafkaProxy(
            KafkaPolicy([L7Allow(7, kafka=rules)]),
            lambda _ip: 7,
            host="127.0.0.1",
            upstream=("127.0.0.1", self.broker.port),
        )
        self.loop.call(self.proxy.start())

    def close(self) -> None:
        try:
            self.loop.call(self.proxy.stop())
            self.loop.call(self.broker.stop())
        finally:
            self.loop.stop()


class _Failures(logging.Handler):
    """Log records with a traceback: an exception escaped a connection's handling."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def proxied() -> Iterator[Proxied]:
    p = Proxied()
    try:
        yield p
    finally:
        p.close()


def _api_versions(port: int, correlation: int) -> int:
    """Send ApiVersions v0 on a new connection; the correlation id of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        body = struct.pack(">hhih", k.API_VERSIONS, 0, correlation, 1) + b"c"
        s.sendall(struct.pack(">i", len(body)) + body)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">i", data[:4])[0]:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed after {data!r}")
            data += chunk
        return int(struct.unpack(">i", data[4:8])[0])


def _framed(frame: bytes) -> bytes:
    return struct.pack(">i", len(frame)) + frame


@scaled(0.25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=64),
            hostile_frames().map(_framed),
            mutated().map(_framed),
            requests().map(lambda r: _framed(r[5])),
        ),
        min_size=1,
        max_size=4,
    ),
    st.integers(1, 2**31 - 1),
)
def test_proxy_survives_garbage(proxied: Proxied, chunks: list[bytes], correlation: int) -> None:
    failures = _Failures()
    log = logging.getLogger("cilia.proxy.kafka.proxy")
    log.addHandler(failures)
    try:
        with socket.create_connection(("127.0.0.1", proxied.proxy.port), timeout=10) as s:
            try:
                for chunk in chunks:
                    s.sendall(chunk)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(5)
                while s.recv(65536):  # the proxy answers, or closes, but never hangs
                    pass
            except TimeoutError:
                raise
            except OSError:
                pass  # closed (or reset) by the proxy while we were still sending
        assert _api_versions(proxied.proxy.port, correlation) == correlation
    finally:
        log.removeHandler(failures)
    assert not failures.records, [r.getMessage() for r in failures.records]


def _peak_memory(frame: bytes) -> int:
    """Peak bytes allocated while one frame is handled."""
    tracemalloc.start()
    try:
        handle(frame)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
