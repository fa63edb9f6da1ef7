"""`cilia get`: output a kubectl user can script against (Kubernetes-shaped JSON/YAML,
-n/-A, -l, -o wide, NAME), on a real agent with real pods."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.harness import Cilia, running_agent

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]


@dataclass
class World:
    cilia: Cilia
    ns: str
    """A namespace of this run, with pods db and cache."""
    web: str
    """A pod of this run in `default`."""


def _manifest(ns: str, web: str) -> str:
    return f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}, labels: {{team: data}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {web}, namespace: default, labels: {{app: web, tier: front}},
           annotations: {{owner: team-a}}}}
spec:
  containers: [{{name: srv, ports: [{{containerPort: 80}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: db, namespace: {ns}, labels: {{app: db}}}}
spec:
  containers: [{{name: srv, ports: [{{containerPort: 80}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: cache, namespace: {ns}, labels: {{app: cache, tier: back}}}}
spec:
  containers: [{{name: srv, ports: [{{containerPort: 80}}]}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: db-ingress, namespace: {ns}, labels: {{owner: data}}}}
spec:
  endpointSelector: {{matchLabels: {{app: db}}}}
  ingress: [{{fromEndpoints: [{{matchLabels: {{app: cache}}}}]}}]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tag = secrets.token_hex(3)
    with running_agent(tmp_path_factory.mktemp("get")) as agent:  # `down` removes it all
        w = World(agent, f"get-{tag}", f"web-{tag}")
        agent.apply(_manifest(w.ns, w.web))
        yield w


def _get(c: Cilia, *args: str) -> Any:
    return c.run("get", *args, "-o", "json").json()


def _names(listing: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted(
        (i["metadata"].get("namespace", ""), i["metadata"]["name"]) for i in listing["items"]
    )


def _endpoints(c: Cilia) -> dict[str, dict[str, Any]]:
    return {ep["pod"]: ep for ep in c.client.request("GET", "/endpoint")}


def test_get_pods_json_is_what_kubectl_prints(world: World) -> None:
    c = world.cilia
    listing = _get(c, "pods", "-n", world.ns)
    assert listing["apiVersion"] == "v1" and listing["kind"] == "List"
    assert listing["metadata"] == {"resourceVersion": ""}
    assert _names(listing) == [(world.ns, "cache"), (world.ns, "db")]
    endpoints = _endpoints(c)
    node = c.run("status", "-o", "json").json()["node"]
    for pod in listing["items"]:
        ep = endpoints[f"{world.ns}/{pod['metadata']['name']}"]
        assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
        status = pod["status"]
        # jq '.items[].status.podIP' and friends
        assert status["podIP"] == ep["ipv4"]
        assert status["podIPs"] == [{"ip": ep["ipv4"]}]
        assert status["phase"] == "Running"
        ready = [cond for cond in status["conditions"] if cond["type"] == "Ready"]
        assert ready == [{"type": "Ready", "status": "True"}]
        assert status["hostIP"] == c.config.host_router_ip
        assert pod["spec"]["nodeName"] == node
        assert status["cilia"] == {
            "state": "ready",
            "endpointID": ep["id"],
            "identity": ep["identity"],
        }
    db = next(p for p in listing["items"] if p["metadata"]["name"] == "db")
    assert db["metadata"]["labels"] == {"app": "db"}
    assert db["spec"]["containers"][0]["ports"][0]["containerPort"] == 80


def test_default_namespace_unless_n_or_all(world: World) -> None:
    c = world.cilia
    assert _names(_get(c, "pods")) == [("default", world.web)]
    everything = _names(_get(c, "pods", "-A"))
    assert everything == sorted([(world.ns, "cache"), (world.ns, "db"), ("default", world.web)])
    web = _get(c, "pods")["items"][0]["metadata"]
    assert web["annotations"] == {"owner": "team-a"}
    assert _names(_get(c, "pods", "-n", f"none-{world.ns}")) == []
    namespaces = {i["metadata"]["name"]: i for i in _get(c, "namespaces")["items"]}
    assert namespaces[world.ns]["kind"] == "Namespace"
    assert namespaces[world.ns]["metadata"]["labels"] == {"team": "data"}
    assert "namespace" not in namespaces[world.ns]["metadata"]


def test_label_selector(world: World) -> None:
    c = world.cilia
    assert _names(_get(c, "pods", "-A", "-l", "app=db")) == [(world.ns, "db")]
    assert _names(_get(c, "pods", "-A", "-l", "app!=db")) == sorted(
        [(world.ns, "cache"), ("default", world.web)]
    )
    assert _names(_get(c, "pods", "-A", "-l", "tier in (front,back)")) == sorted(
        [(world.ns, "cache"), ("default", world.web)]
    )
    assert _names(_get(c, "pods", "-n", world.ns, "-l", "!tier")) == [(world.ns, "db")]
    assert _names(_get(c, "pods", "-A", "-l", "tier,app notin (web)")) == [(world.ns, "cache")]
    assert _names(_get(c, "pods", "-A", "-l", "app=web,tier=back")) == []
    assert _names(_get(c, "namespaces", "-l", "team=data")) == [("", world.ns)]
    assert _names(_get(c, "cnp", "-n", world.ns, "-l", "owner")) == [(world.ns, "db-ingress")]
    bad = c.run("get", "pods", "-l", "app in (", check=False)
    assert bad.code == 1 and "label selector" in bad.stderr


def test_wide_table_has_node_ip_and_identity(world: World) -> None:
    c = world.cilia
    ep = _endpoints(c)[f"{world.ns}/db"]
    node = c.run("status", "-o", "json").json()["node"]
    narrow = c.run("get", "pods", "-n", world.ns).stdout.splitlines()
    assert narrow[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "STATE"]
    assert [line.split() for line in narrow if line.startswith("db ")] == [
        ["db", "1/1", "Running", "0", "ready"]
    ]
    wide = c.run("get", "pods", "-n", world.ns, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == [
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "STATE",
        "IP",
        "NODE",
        "IDENTITY",
        "ENDPOINT",
        "LABELS",
    ]
    row = next(line.split() for line in wide if line.startswith("db "))
    assert row == [
        "db",
        "1/1",
        "Running",
        "0",
        "ready",
        ep["ipv4"],
        node,
        str(ep["identity"]),
        str(ep["id"]),
        "app=db",
    ]
    every = c.run("get", "pods", "-A").stdout.splitlines()
    assert every[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert any(line.split()[:2] == ["default", world.web] for line in every)


def test_name_gives_the_object_itself(world: World) -> None:
    c = world.cilia
    pod = _get(c, "pod", world.web)
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == world.web
    assert pod["status"]["podIP"] == _endpoints(c)[f"default/{world.web}"]["ipv4"]
    db = yaml.safe_load(c.run("get", "pod", "db", "-n", world.ns, "-o", "yaml").stdout)
    assert db["kind"] == "Pod" and db["metadata"]["namespace"] == world.ns
    assert db["status"]["phase"] == "Running"
    cnp = _get(c, "cnp", "db-ingress", "-n", world.ns)
    assert cnp["apiVersion"] == "cilium.io/v2" and cnp["kind"] == "CiliumNetworkPolicy"
    assert cnp["status"]["cilia"] == {"rules": 1}
    assert cnp["status"]["nodes"], "the per-node enforcement status stays"
    missing = c.run("get", "pod", "db", check=False)  # db is not in `default`
    assert missing.code == 1 and "not found" in missing.stderr
    table = c.run("get", "pod", "db", "-n", world.ns).stdout.splitlines()
    assert len(table) == 2 and table[1].startswith("db ")


@pytest.mark.skipif(shutil.which("jq") is None, reason="needs jq")
def test_jq_as_against_kubectl(world: World, tmp_path: Path) -> None:
    c = world.cilia
    out = c.run("get", "pods", "-A", "-o", "json").stdout
    jq = subprocess.run(
        ["jq", "-r", '.items[] | select(.status.phase == "Running") | .status.podIP'],
        input=out,
        capture_output=True,
        text=True,
        check=True,
    )
    endpoints = _endpoints(c)
    wanted = {
        endpoints[p]["ipv4"]
        for p in (f"default/{world.web}", f"{world.ns}/db", f"{world.ns}/cache")
    }
    assert set(jq.stdout.split()) == wanted
