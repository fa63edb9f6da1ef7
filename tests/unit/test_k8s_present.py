"""`cilia get -o json|yaml`: Kubernetes-shaped objects, and kubectl's `-l` selectors."""

from __future__ import annotations

from typing import Any

import pytest

from cilia.k8s import present
from cilia.k8s.manifests import dump, parse_manifests
from cilia.labels import ValidationError
from cilia.labels.query import parse_selector, selects

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: prod
  labels: {app: web, tier: front}
  annotations: {owner: team-a}
spec:
  containers: [{name: c, ports: [{containerPort: 80}]}]
"""


def _pod_obj() -> dict[str, Any]:
    return dump(parse_manifests(POD, "test")[0])


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


def test_list_is_what_kubectl_prints() -> None:
    assert present.k8s_list([]) == {
        "apiVersion": "v1",
        "kind": "List",
        "items": [],
        "metadata": {"resourceVersion": ""},
    }


def test_running_pod_has_kubectl_status() -> None:
    row = {"node": "n1", "ipv4": "10.1.0.5", "identity": 4242, "endpoint": 7, "state": "ready"}
    pod = present.pod(_pod_obj(), row, "192.168.1.2")
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    assert pod["metadata"] == {
        "name": "web",
        "namespace": "prod",
        "labels": {"app": "web", "tier": "front"},
        "annotations": {"owner": "team-a"},
    }
    assert pod["spec"]["nodeName"] == "n1"
    assert pod["spec"]["containers"][0]["name"] == "c"
    status = pod["status"]
    assert status["phase"] == "Running"
    assert status["podIP"] == "10.1.0.5" and status["podIPs"] == [{"ip": "10.1.0.5"}]
    assert status["hostIP"] == "192.168.1.2" and status["hostIPs"] == [{"ip": "192.168.1.2"}]
    assert _condition(pod, "Ready") == {"type": "Ready", "status": "True"}
    assert _condition(pod, "PodScheduled")["status"] == "True"
    assert status["cilia"] == {"state": "ready", "endpointID": 7, "identity": 4242}
    assert "cilia.io/identity" not in pod["metadata"]["annotations"], "status.cilia only"


def test_pod_not_reported_yet_is_pending_without_address() -> None:
    pod = present.pod(_pod_obj(), {"state": "pending"}, None)
    assert pod["status"]["phase"] == "Pending"
    assert "podIP" not in pod["status"] and "hostIP" not in pod["status"]
    assert "nodeName" not in pod["spec"]
    ready = _condition(pod, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "EndpointNotReady"
    assert _condition(pod, "PodScheduled")["status"] == "False"


def test_pod_waiting_for_identity_says_why() -> None:
    row = {"node": "n1", "state": "waiting-for-identity", "detail": "kvstore unreachable"}
    pod = present.pod(_pod_obj(), row, "192.168.1.2")
    assert pod["status"]["phase"] == "Pending"
    assert "kvstore unreachable" in _condition(pod, "Ready")["message"]
    assert pod["status"]["cilia"]["detail"] == "kvstore unreachable"


@pytest.mark.parametrize(
    ("state", "phase"),
    [
        (None, "Pending"),
        ("creating", "Pending"),
        ("waiting-for-identity", "Pending"),
        ("ready", "Running"),
        ("regenerating", "Running"),
        ("waiting-to-regenerate", "Running"),
        ("not-ready", "Running"),
        ("restoring", "Running"),
        ("disconnected", "Unknown"),
    ],
)
def test_pod_phase(state: str | None, phase: str) -> None:
    assert present.pod_phase(state) == phase


def test_presenting_does_not_change_the_stored_object() -> None:
    obj = _pod_obj()
    before = dump(parse_manifests(POD, "test")[0])
    pod = present.pod(obj, {"node": "n1", "state": "ready"}, None)
    pod["spec"]["containers"].append({"name": "x"})
    assert obj == before


def test_namespace_is_cluster_scoped() -> None:
    obj = dump(parse_manifests("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n", "t")[0])
    ns = present.namespace(obj)
    assert ns["kind"] == "Namespace" and "namespace" not in ns["metadata"]
    assert ns["metadata"]["name"] == "prod" and ns["status"] == {"phase": "Active"}


def test_policy_keeps_its_status_and_adds_cilia_rules() -> None:
    obj = dump(
        parse_manifests(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"
            "metadata: {name: p, namespace: prod}\n"
            "spec: {endpointSelector: {}, ingress: [{fromEndpoints: [{}]}]}\n",
            "t",
        )[0]
    )
    obj["status"] = {"nodes": {"n1": {"ok": True}}}
    cnp = present.policy(obj, 1)
    assert cnp["apiVersion"] == "cilium.io/v2" and cnp["metadata"]["namespace"] == "prod"
    assert cnp["spec"]["endpointSelector"] == {}
    assert cnp["status"] == {"nodes": {"n1": {"ok": True}}, "cilia": {"rules": 1}}


def test_service_has_backends_under_cilia() -> None:
    obj = dump(
        parse_manifests(
            "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: prod}\n"
            "spec: {ports: [{port: 5432}]}\n",
            "t",
        )[0]
    )
    svc = present.service(obj, ["10.9.0.1"])
    assert svc["kind"] == "Service" and svc["status"]["cilia"] == {"backends": ["10.9.0.1"]}


def test_node_is_node_shaped() -> None:
    node = present.node("node1", "192.168.50.2", "10.200.1.0/24", 1_700_000_000.0, True)
    assert node["kind"] == "Node" and node["metadata"]["name"] == "node1"
    assert node["spec"] == {"podCIDR": "10.200.1.0/24", "podCIDRs": ["10.200.1.0/24"]}
    internal = [a for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
    assert internal == [{"type": "InternalIP", "address": "192.168.50.2"}]
    ready = node["status"]["conditions"][0]
    assert ready["type"] == "Ready" and ready["status"] == "True"
    dual = present.node("node1", None, "10.200.1.0/24", None, True, "fd00:c1a::1:0:0/96")
    assert dual["spec"]["podCIDRs"] == ["10.200.1.0/24", "fd00:c1a::1:0:0/96"]
    assert ready["lastHeartbeatTime"] == "2023-11-14T22:13:20Z"
    stale = present.node("node2", None, None, None, False)
    assert stale["status"]["conditions"][0]["status"] == "False"
    assert stale["spec"] == {} and stale["status"]["addresses"][0]["type"] == "Hostname"


# -- kubectl -l --------------------------------------------------------------

WEB = {"app": "web", "tier": "front", "env": "prod"}
DB = {"app": "db", "env": "dev"}
BARE: dict[str, str] = {}


@pytest.mark.parametrize(
    ("text", "web", "db", "bare"),
    [
        ("", True, True, True),
        ("app=web", True, False, False),
        ("app==web", True, False, False),
        ("app = web", True, False, False),
        ("app!=web", False, True, True),
        ("app=web,env=prod", True, False, False),
        ("app=web,env=dev", False, False, False),
        ("app in (web,db)", True, True, False),
        ("app in ( web , db )", True, True, False),
        ("env notin (prod)", False, True, True),
        ("tier", True, False, False),
        ("!tier", False, True, True),
        ("app,!tier", False, True, False),
        ("app in (web,db),env!=dev", True, False, False),
        ("example.com/role in (x)", False, False, False),
    ],
)
def test_selector(text: str, web: bool, db: bool, bare: bool) -> None:
    selector = parse_selector(text)
    assert (selects(selector, WEB), selects(selector, DB), selects(selector, BARE)) == (
        web,
        db,
        bare,
    )


def test_selector_empty_value_matches_empty_label() -> None:
    assert selects(parse_selector("flag="), {"flag": ""})
    assert not selects(parse_selector("flag="), {"flag": "on"})


@pytest.mark.parametrize(
    "text",
    ["app=web,", "app in ()", "app in (a", "app)", "=web", "app=we b", "a b", "app=web=x", "-x"],
)
def test_selector_errors(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_selector(text)


def test_pod_containers_decide_ready_and_phase() -> None:
    containers = [
        {"name": "a", "ready": True, "state": "running", "restarts": 0, "exit_code": None},
        {"name": "b", "ready": False, "state": "waiting", "restarts": 3, "exit_code": 1},
    ]
    row = {"node": "n1", "state": "ready", "phase": "Running", "containers": containers}
    pod = present.pod(_pod_obj(), row, "192.168.1.2")
    ready = _condition(pod, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"
    assert "b" in ready["message"]
    statuses = pod["status"]["containerStatuses"]
    assert [(c["name"], c["ready"], c["restartCount"]) for c in statuses] == [
        ("a", True, 0),
        ("b", False, 3),
    ]
    assert statuses[1]["state"] == {"waiting": {"reason": "CrashLoopBackOff"}}
    done = [{"name": "a", "ready": False, "state": "terminated", "restarts": 0, "exit_code": 0}]
    finished = present.pod(_pod_obj(), {**row, "phase": "Succeeded", "containers": done})
    assert finished["status"]["phase"] == "Succeeded"
    assert finished["status"]["containerStatuses"][0]["state"] == {"terminated": {"exitCode": 0}}
