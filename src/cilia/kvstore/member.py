"""This node's membership of the cluster: everything the agent shares through etcd.

`ClusterMember` joins (lease, pod range, node key), allocates identities cluster-wide,
publishes the node's endpoint addresses and pod status, stores objects with versioned
transactions, and mirrors what the other nodes publish. It never imports the agent:
the agent hands it a `ClusterOwner`, called from watch threads when shared state changes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cilia.k8s.manifests import Manifest, Pod, display
from cilia.kvstore.client import Etcd, KeyValue, KvstoreUnavailable, Reflector
from cilia.kvstore.identities import ClusterIdentityAllocator, Remaps
from cilia.kvstore.ipcache import IpcachePublisher, IpcacheWatcher, RemoteIp
from cilia.kvstore.nodes import NodeInfo, NodeRegistry, claim_pod_cidr
from cilia.kvstore.objects import ClusterObjects, ObjectWatcher
from cilia.kvstore.scheduling import place_all
from cilia.kvstore.session import NodeSession
from cilia.router import node_ipv6_range, router_ip

log = logging.getLogger("cilia.kvstore")

POD_STATUS_PREFIX = "cilia/state/pods/v1/"
"""`<namespace>/<name>` -> {node, ipv4, identity, endpoint, state} of a running pod, under
its node's lease (what `cilia get pods` and the probe matrix use for other nodes' pods)."""

JOIN_TIMEOUT = 30.0
WAIT_TIMEOUT = 30.0


class ClusterOwner(Protocol):
    """What the member tells the agent (called from watch threads)."""

    def cluster_objects(
        self, upserts: Mapping[str, Manifest], deletes: set[str], snapshot: bool
    ) -> None:
        """Objects changed in the store (`snapshot`: upserts are the whole store)."""

    def cluster_changed(self, reason: str) -> None:
        """Identities, nodes or remote addresses changed: regenerate soon."""

    def identities_remapped(self, remaps: Remaps) -> None:
        """Identities this node held had to change (their ids were taken meanwhile)."""


@dataclass(frozen=True)
class MemberSettings:
    """What joining needs, from the agent's configuration."""

    endpoints: list[str]
    node_name: str
    underlay_ip: str
    cluster_pod_cidr: str
    node_prefix_len: int
    lease_ttl: int
    lease_keepalive: float
    router_ip: str = ""
    """The configured router address (empty: the default of the pod range it gets)."""
    ipv6_cluster_cidr: str = ""
    """The cluster's IPv6 /64 the node's /96 comes from (empty: IPv6 off)."""


class ClusterMember:
    """The node's view of, and contribution to, the shared store."""

    def __init__(
        self,
        settings: MemberSettings,
        owner: ClusterOwner,
        on_operation: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.owner = owner
        self.etcd = Etcd(settings.endpoints, on_operation=on_operation)
        self.session = NodeSession(self.etcd, settings.lease_ttl, settings.lease_keepalive)
        self.identities = ClusterIdentityAllocator(
            self.etcd, self.session, settings.node_name, on_remap=owner.identities_remapped
        )
        self.identities.on_change = lambda: owner.cluster_changed("identities changed")
        self.objects = ClusterObjects(self.etcd)
        self.pod_cidr = ""
        self.ipv6_cidr = ""
        """The node's IPv6 pod range ("" with IPv6 off), derived from its IPv4 one."""
        self._registry: NodeRegistry | None = None
        self._ipcache = IpcachePublisher(
            self.etcd, self.session, settings.node_name, settings.underlay_ip
        )
        self._remote_watch = IpcacheWatcher(self.etcd, settings.node_name, self._remote_changed)
        self._pods_watch = Reflector(
            self.etcd, POD_STATUS_PREFIX, self._pods_synced, self._pods_changed
        )
        self._object_watch = ObjectWatcher(
            self.etcd,
            on_sync=lambda objs, _rev: owner.cluster_objects(objs, set(), True),
            on_change=lambda ups, dels, _rev: owner.cluster_objects(ups, dels, False),
        )
        self._remote: dict[str, RemoteIp] = {}
        self._pod_status: dict[str, dict[str, Any]] = {}
        self._status_wanted: dict[str, bytes] = {}
        self._status_written: dict[str, bytes] = {}
        self._status_lock = threading.Lock()
        self.session.on_new_lease(self._lease_replaced)

    # -- life cycle ------------------------------------------------------

    def join(self, preferred_cidr: str | None) -> str:
        """Take the lease, claim a pod range (the previous one when free), register the
        node and mirror the cluster's identities; returns the pod range."""
        s = self.settings
        self.session.start()
        if not self.session.wait_for_lease(JOIN_TIMEOUT):
            self.session.stop(revoke=False)
            raise KvstoreUnavailable(
                f"cannot join the cluster: etcd at {', '.join(s.endpoints)} did not grant a "
                f"lease within {JOIN_TIMEOUT:.0f}s ({self.session.status().get('last_error')})"
            )
        self.pod_cidr = claim_pod_cidr(
            self.etcd,
            self.session,
            s.node_name,
            s.cluster_pod_cidr,
            s.node_prefix_len,
            preferred_cidr,
        )
        if s.ipv6_cluster_cidr:
            self.ipv6_cidr = node_ipv6_range(s.cluster_pod_cidr, self.pod_cidr, s.ipv6_cluster_cidr)
        local = NodeInfo(
            name=s.node_name,
            underlay_ip=s.underlay_ip,
            pod_cidr=self.pod_cidr,
            router_ip=router_ip(self.pod_cidr, s.router_ip),
            ipv6_cidr=self.ipv6_cidr,
        )
        self._registry = NodeRegistry(
            self.etcd,
            self.session,
            local,
            s.lease_keepalive,
            lambda _nodes: self.owner.cluster_changed("nodes changed"),
        )
        self._registry.start()
        self.identities.start()
        self.identities.wait_synced(JOIN_TIMEOUT)
        log.info("joined the cluster as %s with pod range %s", s.node_name, self.pod_cidr)
        return self.pod_cidr

    def watch(self) -> None:
        """Mirror what other nodes publish, then the objects (applied synchronously)."""
        self._remote_watch.start()
        self._pods_watch.start()
        self._object_watch.start()

    def leave(self, forget: bool = False) -> None:
        """Stop watching. `forget` (the node goes away) deletes its keys now; otherwise
        they stay until the lease expires, so a restarted agent takes them over."""
        for w in (self._object_watch, self._pods_watch, self._remote_watch):
            w.stop()
        if self._registry is not None:
            self._registry.stop(leave=forget)
        self.identities.stop()
        self.session.stop(revoke=forget)
        self.etcd.close()

    # -- objects ---------------------------------------------------------

    def place(self, pods: Sequence[Pod], stored: Mapping[str, Pod]) -> list[Pod]:
        """Give every pod a node: its stored one, its own `spec.nodeName`, or the least
        loaded node (raises PlacementError, a ValueError, for an unknown node name)."""
        placed = {key: p.spec.nodeName for key, p in stored.items() if p.spec.nodeName}
        nodes = sorted(self.nodes())
        chosen = place_all(pods, nodes, placed)
        return [
            pod.model_copy(
                update={"spec": pod.spec.model_copy(update={"nodeName": chosen[pod.key]})}
            )
            for pod in pods
        ]

    def apply(self, manifests: Sequence[Manifest]) -> list[dict[str, str]]:
        """Store objects in one versioned transaction; returns once this node applied it."""
        result = self.objects.apply(manifests)
        self._wait(result.revision)
        return [{"object": display(m), "action": result.actions[m.key]} for m in manifests]

    def delete(self, manifests: Sequence[Manifest]) -> list[dict[str, str]]:
        """Delete objects in one transaction; returns once this node applied it."""
        result = self.objects.delete([m.key for m in manifests])
        self._wait(result.revision)
        return [{"object": display(m), "action": result.actions[m.key]} for m in manifests]

    def _wait(self, revision: int) -> None:
        if not self._object_watch.wait_for(revision, WAIT_TIMEOUT):
            raise TimeoutError(f"this node did not see store revision {revision} in time")

    # -- what this node publishes ---------------------------------------

    def publish(self, ips: Mapping[str, int], pods: Mapping[str, Mapping[str, Any]]) -> bool:
        """Make this node's ipcache and pod status keys exactly these; False when the
        store could not be written now (`sync()` catches up later)."""
        node = self.settings.node_name
        with self._status_lock:
            self._status_wanted = {
                ref: json.dumps({**status, "node": node}, sort_keys=True).encode()
                for ref, status in pods.items()
            }
        ips_done = self._ipcache.publish(ips)
        return self.sync_status() and ips_done

    def sync(self) -> bool:
        """Write what the last `publish` could not; True when the store is up to date."""
        return self._ipcache.sync() & self.sync_status()

    def sync_status(self) -> bool:
        """Write the pod status keys that differ from what was written."""
        lease = self.session.lease
        if not lease:
            return False
        with self._status_lock:
            try:
                for ref, value in self._status_wanted.items():
                    if self._status_written.get(ref) != value:
                        self.etcd.put(POD_STATUS_PREFIX + ref, value, lease=lease)
                        self._status_written[ref] = value
                for ref in set(self._status_written) - set(self._status_wanted):
                    self.etcd.delete(POD_STATUS_PREFIX + ref)
                    del self._status_written[ref]
            except KvstoreUnavailable as exc:
                log.warning("pod status not published: %s", exc)
                return False
        return True

    def _lease_replaced(self, _lease: int) -> None:
        with self._status_lock:
            self._status_written.clear()  # everything again, under the new lease
        self.sync_status()

    # -- what the others publish ------------------------------------------

    def _remote_changed(self, remote: dict[str, RemoteIp]) -> None:
        self._remote = dict(remote)
        self.owner.cluster_changed("remote endpoints changed")

    def _pods_synced(self, snapshot: dict[str, KeyValue]) -> None:
        self._pod_status = {}
        self._pods_changed(snapshot, set(), 0)

    def _pods_changed(self, upserts: dict[str, KeyValue], deletes: set[str], _rev: int) -> None:
        status = dict(self._pod_status)
        for key, kv in upserts.items():
            try:
                status[key.removeprefix(POD_STATUS_PREFIX)] = json.loads(kv.value)
            except ValueError:
                log.warning("ignoring undecodable pod status %s", key)
        for key in deletes:
            status.pop(key.removeprefix(POD_STATUS_PREFIX), None)
        changed = status != self._pod_status
        self._pod_status = status
        if changed:  # readiness and addresses of pods decide services' backends
            self.owner.cluster_changed("pod status changed")

    def nodes(self) -> dict[str, NodeInfo]:
        """Every node of the cluster, this one included."""
        return self._registry.nodes() if self._registry else {}

    def tunnels(self) -> dict[str, str]:
        """Pod ranges (IPv4, and IPv6 when it has one) -> underlay address of every other
        node."""
        me = self.settings.node_name
        out: dict[str, str] = {}
        for n in self.nodes().values():
            if n.name != me:
                out |= {cidr: n.underlay_ip for cidr in (n.pod_cidr, n.ipv6_cidr) if cidr}
        return out

    def remote_ips(self) -> dict[str, RemoteIp]:
        """Addresses of other nodes' endpoints."""
        return dict(self._remote)

    def pod_status(self) -> dict[str, dict[str, Any]]:
        """`namespace/name` -> status published by the pod's node (any node)."""
        return dict(self._pod_status)

    # -- kvstore commands and status -------------------------------------

    def kv_get(self, key: str, recursive: bool) -> list[KeyValue]:
        """`cilia kvstore get`."""
        if recursive:
            return self.etcd.list_prefix(key)[0]
        kv = self.etcd.get(key)
        return [kv] if kv is not None else []

    def kv_set(self, key: str, value: str) -> None:
        """`cilia kvstore set`."""
        self.etcd.put(key, value.encode())

    def kv_delete(self, key: str) -> int:
        """`cilia kvstore delete` (a key; with a trailing '/' every key under it)."""
        if key.endswith("/"):
            return self.etcd.delete_prefix(key)
        return int(self.etcd.delete(key))

    def status(self) -> dict[str, Any]:
        """For `cilia status`: store endpoints and health, lease, watches, node count."""
        watches: dict[str, Any] = {
            "identities": self.identities.reflector,
            "objects": self._object_watch,
            "ipcache": self._remote_watch,
            "pods": self._pods_watch,
        }
        healthy = self.etcd.healthy()
        return {
            "backend": "etcd",
            "endpoints": self.settings.endpoints,
            "healthy": healthy,
            "lease": self.session.status(),
            "watches": {
                name: {"synced": w.synced, "revision": w.revision, "error": w.last_error or ""}
                for name, w in watches.items()
            },
            "nodes": len(self.nodes()),
            "checked-at": time.time(),
        }
