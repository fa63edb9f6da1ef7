"""The agent's record of one local endpoint (a pod's network presence)."""

from __future__ import annotations

import hashlib
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cilia.datapath.netns import resolve_netns
from cilia.datapath.pod_network import GATEWAY_IP, GATEWAY_IPV6, POD_IFNAME, PodNetwork
from cilia.labels import Labels
from cilia.policy.desired import EndpointPolicy
from cilia.runtime.supervisor import ContainerStatus


class EndpointState(StrEnum):
    """Life-cycle states, named as in the reference."""

    CREATING = "creating"
    WAITING_FOR_IDENTITY = "waiting-for-identity"
    NOT_READY = "not-ready"
    WAITING_TO_REGENERATE = "waiting-to-regenerate"
    REGENERATING = "regenerating"
    RESTORING = "restoring"
    READY = "ready"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"


def pod_netns_name(name_prefix: str, namespace: str, pod: str) -> str:
    """Network namespace of a pod. '_' cannot occur in a prefix or a Kubernetes name, so
    one agent's names never match another's prefix (`cilia_` vs `cilia-test-1_`)."""
    return f"{name_prefix}_{namespace}_{pod}"


LOG_ENTRIES = 100
"""State changes an endpoint remembers (`cilia endpoint log`)."""
STATE_LOG_ENTRIES = 10
"""The newest of them kept across a restart: the state file is rewritten after every
change, and with a thousand endpoints their whole logs made it ~15 MB."""


def host_ifname(name_prefix: str, namespace: str, pod: str) -> str:
    """Host-side veth name: 'lxc' + 11 hex digits (device names end at 15 chars)."""
    digest = hashlib.sha1(f"{name_prefix}/{namespace}/{pod}".encode()).hexdigest()
    return f"lxc{digest[:11]}"


def local_container_id(namespace: str, pod: str) -> str:
    """The container id under which a local pod's endpoint is known."""
    return f"local:{namespace}:{pod}"


@dataclass
class Endpoint:
    """A workload's network presence on this node: a namespace attached by a veth,
    with an address, an identity and policy. `runtime` says who made the namespace."""

    id: int
    namespace: str
    pod: str
    netns: str
    """Path of the network namespace."""
    ifname: str
    ipv4: str
    labels: Labels
    ipv6: str = ""
    """"" = IPv4 only (IPv6 off, or a Docker network without --ipv6)."""
    container_id: str = ""
    runtime: str = "local"
    pod_ifname: str = POD_IFNAME
    peer_in_host: bool = False
    """The runtime moves the workload end of the veth into its namespace (Docker)."""
    gateway: str = GATEWAY_IP
    """The workload's next hop: the link-local gateway, or the router address for
    runtimes that configure the workload side themselves (no permanent neighbour)."""
    address_reserved: bool = False
    """The address came from `POST /v1/ipam`: it goes back to the reservations (the
    runtime releases it) when the endpoint goes."""
    runtime_labels: Labels | None = None
    """Labels a runtime gave (None: not known yet, the endpoint holds the init
    identity); local pods take theirs from the Pod object instead."""
    identity: int = 0
    state: EndpointState = EndpointState.CREATING
    network: PodNetwork | None = None
    containers: list[ContainerStatus] = field(default_factory=list)
    """A local pod's containers: their processes, restarts and readiness."""
    policy: EndpointPolicy = field(default_factory=EndpointPolicy)
    policy_revision: int = 0
    extra_labels: Labels = field(default_factory=Labels)
    """Labels added with `cilia endpoint labels` (on top of the pod's)."""
    labels_released: bool = False
    """Whether labels held back by the init annotation were released."""
    trace: bool = False
    """TraceNotification: the datapath reports this endpoint's forwarded packets."""
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_ENTRIES))

    @property
    def name(self) -> str:
        """namespace/pod."""
        return f"{self.namespace}/{self.pod}"

    def set_state(self, state: EndpointState, reason: str) -> None:
        """Change state and remember why (shown by `cilia endpoint log`)."""
        self.state = state
        # Interned: a regeneration gives a thousand endpoints the same few messages.
        self.log.append({"time": time.time(), "state": state.value, "message": sys.intern(reason)})

    @property
    def is_local_pod(self) -> bool:
        """True for pods of the embedded runtime (labels from their Pod object)."""
        return self.runtime == "local"

    def addressing(self) -> dict[str, Any]:
        """Address, gateway, MACs, MTU and routes of the workload side (CNI result)."""
        net = self.network
        route_mtu = {"mtu": net.route_mtu} if net and net.route_mtu else {}
        routes = [
            {"dst": f"{self.gateway}/32", **route_mtu},
            {"dst": "0.0.0.0/0", "gw": self.gateway, **route_mtu},
        ]
        if self.ipv6:
            routes.append({"dst": "::/0", "gw": GATEWAY_IPV6, **route_mtu})
        return {
            "ipv4": self.ipv4,
            "gateway": self.gateway,
            **({"ipv6": self.ipv6, "gateway6": GATEWAY_IPV6} if self.ipv6 else {}),
            "mac": net.pod_mac if net else None,
            "host-mac": net.host_mac if net else None,
            "mtu": net.mtu if net else None,
            "routes": routes,
        }

    def to_api(self) -> dict[str, Any]:
        """The REST representation."""
        return {
            "id": self.id,
            "pod": self.name,
            "container-id": self.container_id,
            "runtime": self.runtime,
            "pod-interface": self.pod_ifname,
            "addressing": self.addressing(),
            "identity": self.identity,
            "labels": self.labels.to_list(),
            "ipv4": self.ipv4,
            "ipv6": self.ipv6,
            "interface": self.ifname,
            "ifindex": self.network.host_ifindex if self.network else None,
            "netns": self.netns,
            "state": self.state.value,
            "policy-revision": self.policy_revision,
            "ingress-enforcement": self.policy.ingress_enforced,
            "egress-enforcement": self.policy.egress_enforced,
            "policy-entries": len(self.policy.entries),
            "trace-notification": self.trace,
        }

    def to_state(self) -> dict[str, Any]:
        """What survives an agent restart."""
        return {
            "id": self.id,
            "namespace": self.namespace,
            "pod": self.pod,
            "netns": self.netns,
            "ifname": self.ifname,
            "ipv4": self.ipv4,
            "ipv6": self.ipv6,
            "labels": self.labels.to_list(),
            "identity": self.identity,
            "container_id": self.container_id,
            "runtime": self.runtime,
            "pod_ifname": self.pod_ifname,
            "peer_in_host": self.peer_in_host,
            "gateway": self.gateway,
            "address_reserved": self.address_reserved,
            "runtime_labels": (
                None if self.runtime_labels is None else self.runtime_labels.to_list()
            ),
            "network": self.network.to_dict() if self.network else None,
            "containers": [c.to_dict() for c in self.containers],
            "extra_labels": self.extra_labels.to_list(),
            "labels_released": self.labels_released,
            "trace": self.trace,
            "log": list(self.log)[-STATE_LOG_ENTRIES:],
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Endpoint:
        """Rebuild from to_state() output."""
        runtime_labels = d.get("runtime_labels")
        ep = cls(
            id=d["id"],
            namespace=d["namespace"],
            pod=d["pod"],
            netns=resolve_netns(d["netns"]),
            container_id=d.get("container_id") or local_container_id(d["namespace"], d["pod"]),
            runtime=d.get("runtime", "local"),
            pod_ifname=d.get("pod_ifname", POD_IFNAME),
            peer_in_host=bool(d.get("peer_in_host", False)),
            gateway=d.get("gateway", GATEWAY_IP),
            address_reserved=bool(d.get("address_reserved", False)),
            runtime_labels=None if runtime_labels is None else Labels.parse(runtime_labels),
            ifname=d["ifname"],
            ipv4=d["ipv4"],
            ipv6=d.get("ipv6", ""),
            labels=Labels.parse(d["labels"]),
            identity=d["identity"],
            state=EndpointState.RESTORING,
            network=PodNetwork.from_dict(d["network"]) if d.get("network") else None,
            containers=[ContainerStatus.from_dict(c) for c in d.get("containers", [])],
            extra_labels=Labels.parse(d.get("extra_labels", [])),
            labels_released=bool(d.get("labels_released", False)),
            trace=bool(d.get("trace", False)),
        )
        ep.log.extend(d.get("log", []))
        return ep
