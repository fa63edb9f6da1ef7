"""Kubernetes-shaped objects for `cilia get -o json|yaml` (pure: no I/O).

What kubectl prints, so that a script written against kubectl works: a `List`
(`apiVersion: v1`, `kind: List`, `items`, `metadata.resourceVersion: ""`) of objects
with `apiVersion`, `kind`, `metadata` (name, namespace for namespaced kinds,
labels, annotations, and creationTimestamp when known), `spec` and `status`.

Pods get what `kubectl get pod -o json` has in `status`: `phase`, `conditions`
(`PodScheduled`, `Ready` with "True"/"False"), `hostIP`/`hostIPs`, `podIP`/`podIPs`;
`spec.nodeName` is the node the pod runs on. Nodes get `spec.podCIDR(s)` and
`status.addresses` (InternalIP: the underlay address) and a `Ready` condition
from their heartbeat.

Cilia's own fields never go into `metadata.annotations` (they would come back as
user annotations through `get -o yaml | apply -f -`); they are in a `status.cilia`
block: for pods `endpointID`, `identity`, `state` (the endpoint state) and
`detail`; for policies `rules`; for services `backends`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping
from typing import Any

NAMESPACED = {"Pod", "NetworkPolicy", "CiliumNetworkPolicy", "Service", "Endpoints"}

PENDING_STATES = frozenset({"pending", "creating", "waiting-for-identity"})
"""Endpoint states of a pod whose network is not set up yet (`pending`: no node
has reported it)."""
RUNNING_STATES = frozenset(
    {"ready", "not-ready", "waiting-to-regenerate", "regenerating", "restoring", "disconnecting"}
)
"""Endpoint states of a pod whose processes run (a regenerating pod keeps running)."""


def k8s_list(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The `List` kubectl prints for `get KIND -o json`."""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": list(items),
        "metadata": {"resourceVersion": ""},
    }


def timestamp(seconds: float) -> str:
    """RFC 3339 in UTC, second precision, as Kubernetes writes times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _metadata(obj: Mapping[str, Any], created: float | None = None) -> dict[str, Any]:
    meta = obj.get("metadata", {})
    out: dict[str, Any] = {"name": meta["name"]}
    if obj.get("kind") in NAMESPACED:
        out["namespace"] = meta.get("namespace") or "default"
    out["labels"] = dict(meta.get("labels") or {})
    out["annotations"] = dict(meta.get("annotations") or {})
    if created is not None:
        out["creationTimestamp"] = timestamp(created)
    return out


def _object(obj: Mapping[str, Any], created: float | None = None) -> dict[str, Any]:
    """apiVersion, kind and metadata first, then the object's other fields (spec...)."""
    out: dict[str, Any] = {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": _metadata(obj, created),
    }
    for key, value in obj.items():
        if key not in out:
            out[key] = copy.deepcopy(value)
    return out


def pod_phase(state: str | None) -> str:
    """Kubernetes phase of a pod from its endpoint state."""
    if state is None or state in PENDING_STATES:
        return "Pending"
    if state in RUNNING_STATES:
        return "Running"
    return "Unknown"


def _condition(kind: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "status": "True" if ok else "False"}
    if not ok and reason:
        out["reason"] = reason
    if not ok and message:
        out["message"] = message
    return out


def _container_status(c: Mapping[str, Any]) -> dict[str, Any]:
    """A containerStatuses item: name, ready, restartCount and its state."""
    state: dict[str, Any] = {c.get("state", "running"): {}}
    if c.get("state") == "terminated":
        state["terminated"] = {"exitCode": c.get("exit_code")}
    elif c.get("state") == "waiting":
        state["waiting"] = {"reason": "CrashLoopBackOff"}
    return {
        "name": c["name"],
        "ready": bool(c.get("ready")),
        "restartCount": int(c.get("restarts", 0)),
        "state": state,
    }


def pod(
    obj: Mapping[str, Any],
    row: Mapping[str, Any] | None = None,
    host_ip: str | None = None,
    created: float | None = None,
) -> dict[str, Any]:
    """A Pod: the applied manifest `obj`, what its node reports (`row`: node, ipv4,
    identity, endpoint, state, detail, phase, containers) and the node's address
    `host_ip`."""
    row = row or {}
    out = _object(obj, created)
    spec = out.setdefault("spec", {})
    node = row.get("node") or spec.get("nodeName") or ""
    if node:
        spec["nodeName"] = node
    state = row.get("state") or None
    containers = row.get("containers") or []
    unready = [c["name"] for c in containers if not c.get("ready")]
    ready = state == "ready" and not unready
    message = f"endpoint state: {state or 'not reported'}"
    if row.get("detail"):
        message += f" ({row['detail']})"
    if unready:
        message = f"containers not ready: {', '.join(unready)}; {message}"
    phase = pod_phase(state)
    status: dict[str, Any] = {
        "phase": row.get("phase", phase) if phase == "Running" else phase,
        "conditions": [
            _condition("PodScheduled", bool(node), "Unschedulable", "no node yet"),
            _condition(
                "Ready", ready, "ContainersNotReady" if unready else "EndpointNotReady", message
            ),
        ],
    }
    if containers:
        status["containerStatuses"] = [_container_status(c) for c in containers]
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    if row.get("ipv4"):
        status["podIP"] = row["ipv4"]
        status["podIPs"] = [{"ip": ip} for ip in (row["ipv4"], row.get("ipv6")) if ip]
    cilia: dict[str, Any] = {"state": state or "pending"}
    if row.get("endpoint") is not None:
        cilia["endpointID"] = row["endpoint"]
    if row.get("identity") is not None:
        cilia["identity"] = row["identity"]
    if row.get("detail"):
        cilia["detail"] = row["detail"]
    status["cilia"] = cilia
    out["status"] = status
    return out


def namespace(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A Namespace (always Active: Cilia has no namespace life cycle)."""
    out = _object(obj)
    out.setdefault("spec", {})
    out["status"] = {"phase": "Active"}
    return out


def policy(obj: Mapping[str, Any], rules: int) -> dict[str, Any]:
    """A NetworkPolicy or CiliumNetworkPolicy (a CNP keeps its `status.nodes`)."""
    out = _object(obj)
    status = out.setdefault("status", {})
    status["cilia"] = {"rules": rules}
    return out


def service(obj: Mapping[str, Any], backends: Iterable[str]) -> dict[str, Any]:
    """A Service; `backends` are the addresses of its Endpoints object."""
    out = _object(obj)
    out.setdefault("spec", {})
    out["status"] = {"loadBalancer": {}, "cilia": {"backends": list(backends)}}
    return out


def node(
    name: str,
    underlay_ip: str | None,
    pod_cidr: str | None,
    heartbeat: float | None,
    healthy: bool,
    ipv6_cidr: str = "",
) -> dict[str, Any]:
    """A Node of the cluster: Ready while its heartbeat is fresh; a dual-stack node's
    `podCIDRs` lists its IPv6 range after the IPv4 one, as Kubernetes does."""
    spec: dict[str, Any] = {}
    if pod_cidr:
        spec["podCIDR"] = pod_cidr
        spec["podCIDRs"] = [c for c in (pod_cidr, ipv6_cidr) if c]
    ready = _condition(
        "Ready", healthy, "NodeStatusUnknown", "the node's heartbeat in the kvstore is stale"
    )
    if heartbeat:
        ready["lastHeartbeatTime"] = timestamp(heartbeat)
    status: dict[str, Any] = {
        "addresses": [{"type": "Hostname", "address": name}],
        "conditions": [ready],
    }
    if underlay_ip:
        status["addresses"].insert(0, {"type": "InternalIP", "address": underlay_ip})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}, "annotations": {}},
        "spec": spec,
        "status": status,
    }
