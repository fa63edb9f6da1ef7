"""The agent in cluster mode: its side of `ClusterMember`.

`ClusterMode` is the `ClusterOwner` the kvstore member calls back from its watch
threads, the cluster path of apply and delete (a transaction in etcd, applied back
from the watch), what the node contributes to the store (its endpoints' addresses and
pods' status) and takes from it (remote endpoints, tunnels, other nodes' pods), and
the cluster's controllers. The agent calls it at a few hooks and stays the one place
that regenerates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cilia.agent.endpoint import EndpointState
from cilia.agent.errors import AgentError
from cilia.agent.trigger import Trigger
from cilia.datapath.host_address import device_ipv4
from cilia.identity import CLUSTER
from cilia.k8s.manifests import Manifest, ObjectConflict, Pod
from cilia.kvstore.client import KvstoreUnavailable
from cilia.kvstore.member import ClusterMember, MemberSettings
from cilia.kvstore.objects import ObjectConflict as StoreConflict
from cilia.service.model import ServiceError

if TYPE_CHECKING:
    from cilia.agent.daemon import Agent

log = logging.getLogger("cilia.agent")


class ClusterMode:
    """Cluster membership of one agent (created by `join`)."""

    def __init__(self, agent: Agent) -> None:
        cfg = agent.config
        if not cfg.underlay_device:
            raise AgentError("cluster mode needs --underlay-device (the tunnel endpoint)")
        self.agent = agent
        self.member = ClusterMember(
            MemberSettings(
                endpoints=cfg.etcd_endpoints,
                node_name=cfg.node_name,
                underlay_ip=device_ipv4(cfg.underlay_device),
                cluster_pod_cidr=cfg.cluster_pod_cidr,
                node_prefix_len=cfg.node_pod_cidr_prefix,
                lease_ttl=cfg.lease_ttl,
                lease_keepalive=cfg.lease_keepalive,
                router_ip=cfg.router_ip,
                ipv6_cluster_cidr=cfg.ipv6_cluster_alloc_cidr if cfg.enable_ipv6 else "",
            ),
            owner=self,
            on_operation=agent.metrics.kvstore_operation,
        )
        self._sync = Trigger("cluster-sync", self._regenerate)
        self._publisher = Trigger("cluster-publish", self._write)
        self._published: tuple[dict[str, int], dict[str, dict[str, Any]]] = ({}, {})
        self.waiting_pods: dict[str, str] = {}
        """Pods of this node waiting for the store (key -> why), retried by a controller."""
        self.relabel_pending = False
        """An endpoint's new labels wait for an identity (the store was unreachable)."""

    def join(self, preferred_cidr: str | None) -> tuple[str, str]:
        """Join through etcd (lease, pod range: the previous one if free, node key,
        identities); returns the node's pod ranges (IPv4, IPv6 or "")."""
        return self.member.join(preferred_cidr), self.member.ipv6_cidr

    def start(self) -> None:
        """After the agent restored its state: watch the store, start the controllers."""
        self._sync.start()
        self._publisher.start()
        self._publisher.fire("agent started")
        self.member.watch()
        controllers = self.agent.controllers
        controllers.add("cluster-pods", 1.0, self._waiting_pods_controller)
        controllers.add("kvstore-sync", 1.0, self._kvstore_sync_controller)
        controllers.add(
            "identity-gc",
            self.agent.config.identity_gc_interval,
            lambda: f"{self.member.identities.gc()} collected",
        )

    def stop(self) -> None:
        """Stop watching; the node's keys stay until its lease expires (a restarted
        agent takes them over)."""
        self._sync.stop()
        self._publisher.stop()
        self.member.leave()

    # -- ClusterOwner --------------------------------------------------------

    def cluster_objects(
        self, upserts: Mapping[str, Manifest], deletes: set[str], snapshot: bool
    ) -> None:
        """The store's objects changed (`snapshot`: `upserts` is the whole store)."""
        agent = self.agent
        with agent.lock:
            if snapshot:
                deletes = deletes | (agent.objects.keys() - set(upserts))
            for key in deletes:
                self.waiting_pods.pop(key, None)
                agent.delete_key(key)
            _, errors = agent.apply_objects(list(upserts.values()), from_store=True)
            for error in errors:
                log.error("object from the store not applied here: %s", error)
            agent.relabel_endpoints()
            agent.regenerate("objects changed in the store")
            agent.save()

    def cluster_changed(self, reason: str) -> None:
        """Identities, nodes or remote endpoints changed: regenerate on the sync thread."""
        self._sync.fire(reason)

    def identities_remapped(self, remaps: Mapping[int, int]) -> None:
        """Identities this node held got new ids (theirs were taken while the store had
        lost them): move the endpoints holding them."""
        with self.agent.lock:
            for ep in self.agent.endpoints.values():
                if ep.identity in remaps:
                    old, ep.identity = ep.identity, remaps[ep.identity]
                    ep.set_state(
                        EndpointState.WAITING_TO_REGENERATE, f"identity {old} -> {ep.identity}"
                    )
        self._sync.fire("identities remapped")

    def _regenerate(self, reasons: list[str]) -> None:
        with self.agent.lock:
            self.agent.regenerate(", ".join(reasons))

    # -- apply and delete -----------------------------------------------------

    def runs_here(self, pod: Pod) -> bool:
        """Is the pod placed on this node?"""
        return pod.spec.nodeName == self.agent.config.node_name

    def apply(self, manifests: list[Manifest]) -> list[dict[str, str]]:
        """Place pods, refuse what one node would refuse, then one versioned transaction;
        returns once this node has applied it from its watch."""
        agent = self.agent
        with agent.lock:
            stored = {p.key: p for p in agent.objects.of_kind("Pod") if isinstance(p, Pod)}
            pods = [m for m in manifests if isinstance(m, Pod)]
            try:
                placed = {p.key: p for p in self.member.place(pods, stored)}
            except ValueError as exc:
                raise AgentError(str(exc)) from None
            manifests = [placed.get(m.key, m) for m in manifests]
            try:
                manifests = agent.services.assign(manifests, agent.objects)
                agent.objects.plan_apply(manifests)
            except (ObjectConflict, ServiceError) as exc:
                raise AgentError(str(exc)) from None
        return self._store(lambda: self.member.apply(manifests), "applied")

    def delete(self, manifests: list[Manifest]) -> list[dict[str, str]]:
        """Delete objects in one transaction; returns once this node applied it."""
        return self._store(lambda: self.member.delete(manifests), "deleted")

    @staticmethod
    def _store(write: Callable[[], list[dict[str, str]]], what: str) -> list[dict[str, str]]:
        try:
            result = write()
        except StoreConflict as exc:
            raise AgentError(str(exc), status=409) from None
        except KvstoreUnavailable as exc:
            raise AgentError(f"kvstore unreachable, nothing {what}: {exc}", status=503) from None
        return result

    def wait_for_store(self, pod: Pod, exc: KvstoreUnavailable) -> None:
        """A pod of this node could not get its identity: retried by `cluster-pods`."""
        self.waiting_pods[pod.key] = f"kvstore unreachable: {exc}"

    # -- desired state --------------------------------------------------------

    def remote_entries(self, local: Mapping[str, int]) -> tuple[dict[str, int], dict[str, str]]:
        """ipcache entries of other nodes' endpoints (with their tunnel endpoints) and of
        other nodes' own addresses (`cluster`, as their traffic arrives here); a local
        entry wins over a stale remote key for the same address."""
        identities: dict[str, int] = {}
        tunnel_endpoints: dict[str, str] = {}
        me = self.agent.config.node_name
        for node in self.member.nodes().values():
            if node.name != me:
                identities[f"{node.underlay_ip}/32"] = CLUSTER
                identities[f"{node.router}/32"] = CLUSTER
                if node.router6:
                    identities[f"{node.router6}/128"] = CLUSTER
        for ip, remote in self.member.remote_ips().items():
            prefix = f"{ip}/128" if ":" in ip else f"{ip}/32"
            if prefix not in local:
                identities[prefix] = remote.identity
                tunnel_endpoints[prefix] = remote.host_ip
        return identities, tunnel_endpoints

    def publish(self) -> None:
        """Tell the cluster this node's endpoint addresses and pod status. The writes
        happen on the publish thread: an unreachable store must not hold the agent lock
        for its timeouts."""
        local = [ep for ep in self.agent.endpoints.values() if ep.network is not None]
        self._published = (
            {ip: ep.identity for ep in local for ip in (ep.ipv4, ep.ipv6) if ip},
            {ep.name: self.agent.pod_row(ep) for ep in local},
        )
        self._publisher.fire("endpoints changed")

    def _write(self, _reasons: list[str]) -> None:
        if not self.member.publish(*self._published):
            log.warning("endpoints not published yet; the kvstore-sync controller retries")

    # -- read side --------------------------------------------------------

    def remote_pod(self, ref: str) -> dict[str, Any] | None:
        """Status of a pod of another node (`ns/name`), as its node published it."""
        status = self.member.pod_status().get(ref)
        return status if status and status.get("node") != self.agent.config.node_name else None

    def pod_rows(self) -> dict[str, dict[str, Any]]:
        """`Pod/ns/name` -> status of every pod the cluster knows, waiting ones included."""
        rows = {f"Pod/{ref}": dict(st) for ref, st in self.member.pod_status().items()}
        node = self.agent.config.node_name
        for key, why in self.waiting_pods.items():
            rows[key] = {
                "node": node,
                "state": EndpointState.WAITING_FOR_IDENTITY.value,
                "detail": why,
            }
        return rows

    def addressed_pods(self) -> set[str]:
        """`ns/name` of every pod of the cluster with a published address."""
        return {ref for ref, st in self.member.pod_status().items() if st.get("ipv4")}

    # -- controllers --------------------------------------------------------

    def _waiting_pods_controller(self) -> str:
        """Create the pods that waited for the store; move endpoints whose new labels
        waited for an identity."""
        agent = self.agent
        with agent.lock:
            if not self.waiting_pods and not self.relabel_pending:
                return "none waiting"
            self.relabel_pending = False
            for key in list(self.waiting_pods):
                pod = agent.objects.get(key)
                if not isinstance(pod, Pod) or agent.endpoint_of(pod.namespace, pod.name):
                    del self.waiting_pods[key]
                    continue
                try:
                    agent.create_pod(pod)
                    del self.waiting_pods[key]
                except KvstoreUnavailable as exc:
                    self.wait_for_store(pod, exc)
            agent.relabel_endpoints()
            agent.regenerate("pods waiting for the store retried")
            agent.save()
            return f"{len(self.waiting_pods)} pods still waiting"

    def _kvstore_sync_controller(self) -> str:
        """Publish what could not be written while the store was unreachable."""
        if not self.member.sync():
            raise KvstoreUnavailable("endpoint addresses or pod status not published yet")
        return "published"
