"""The agent: owns endpoints, identities and policy, and drives the datapath.

Desired state flows one way: manifests and API calls change the object store
and the policy repository; `regenerate` turns them into identities and
per-endpoint desired state (the policy engine decides); the datapath facade
writes the difference into the kernel. Controllers re-check the kernel
periodically and repair drift.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from pathlib import Path
from typing import Any

from cilia.agent.cidr import CidrIdentities
from cilia.agent.cluster import ClusterMode
from cilia.agent.config import AgentConfig
from cilia.agent.controllers import ControllerManager
from cilia.agent.ctgc import CtGc
from cilia.agent.endpoint import (
    Endpoint,
    EndpointState,
    host_ifname,
    local_container_id,
    pod_netns_name,
)
from cilia.agent.errors import AgentError
from cilia.agent.ipam import Ipam
from cilia.agent.l7 import L7Gateway
from cilia.agent.metrics import AgentMetrics
from cilia.agent.monitor import Monitor
from cilia.agent.objects import (
    ObjectConflict,
    ObjectStore,
    display,
)
from cilia.agent.observe import StateWatcher
from cilia.agent.router import router_change
from cilia.agent.runtimes import Runtimes
from cilia.agent.services import Services
from cilia.agent.state import load_state, save_state
from cilia.agent.trigger import Trigger
from cilia.agent.workloads import Workloads
from cilia.datapath import conntrack
from cilia.datapath.address_watch import AddressWatch
from cilia.datapath.host_address import (
    enable_ipv6_routing,
    ensure_host_address,
    remove_host_address,
)
from cilia.datapath.manager import CtLifetimes, Datapath
from cilia.datapath.netns import is_netns
from cilia.datapath.overlay import VXLAN_OVERHEAD
from cilia.datapath.pod_network import (
    GATEWAY_IP,
    PodNetwork,
    ensure_host_peer_veth,
    ensure_pod_network,
    host_addresses,
    remove_pod_network,
    restore_host_peer_veth,
)
from cilia.datapath.proxy_device import proxy_device_name
from cilia.identity import HOST, INIT, RESERVED_LABELS, IdentityAllocator, IdentitySource
from cilia.k8s.manifests import CiliumNetworkPolicy, Manifest, NetworkPolicy, Pod
from cilia.kvstore.client import KvstoreUnavailable
from cilia.kvstore.identities import held_identities
from cilia.labels import Label, Labels
from cilia.policy import PolicyRepository, PolicyResolver, Rule
from cilia.policy.chain import chain_local_ingress, has_egress_redirects
from cilia.policy.cidr import rule_prefixes
from cilia.policy.services import ServiceTranslator
from cilia.runtime import local as pods
from cilia.runtime import supervisor
from cilia.runtime.owner import EndpointRequest
from cilia.runtime.responders import ResponderHost
from cilia.service.model import ServiceError

log = logging.getLogger("cilia.agent")

PROCESS_INTERVAL = 1.0
"""Seconds between checks of local pods' processes and readiness probes."""
INIT_ANNOTATION = "cilia.io/init-labels"
"""Pod annotation: with value `hold` the pod keeps the init identity until its labels
are released (`cilia endpoint labels`, or an apply removing the annotation)."""

STATE_VERSION = 1


class Agent:
    """One node's agent."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.datapath = Datapath(
            config.bpf_dir,
            config.cache_dir,
            lifetimes=CtLifetimes(
                config.ct_lifetime_tcp,
                config.ct_lifetime_tcp_syn,
                config.ct_lifetime_tcp_closing,
                config.ct_lifetime_nontcp,
            ),
            ct_max_entries=config.ct_max_entries,
        )
        self.datapath.trace_all = config.trace_notification
        self.services = Services(config, self.datapath)
        self.identities: IdentitySource = IdentityAllocator()
        self.repo = PolicyRepository()
        self.objects = ObjectStore()
        self.endpoints: dict[int, Endpoint] = {}
        self.ipam = Ipam(config.pod_cidr, {config.host_router_ip})
        self.ipam6 = (
            Ipam(config.ipv6_range, {config.host_router_ipv6}) if config.enable_ipv6 else None
        )
        self.ipam_reserved: set[str] = set()
        """Addresses handed out by `POST /v1/ipam` and not yet taken by an endpoint."""
        self.responders = ResponderHost.of(config.run_dir, config.state_dir)
        self.cidr = CidrIdentities()
        self._translate_services = ServiceTranslator()
        self.resolver: PolicyResolver | None = None
        """The resolver the datapath state was computed with (policy trace uses it)."""
        self.policy_updated: dict[str, tuple[int, float, str]] = {}
        """CNP key -> (revision, time, error) of its last import, for its status."""
        self.realized_revision = 0
        self.started_at = time.time()
        self.controllers = ControllerManager()
        self.monitor = Monitor(config.monitor_queue_size)
        self.monitor.endpoint_name = lambda i: ep.name if (ep := self.endpoints.get(i)) else None
        self.metrics = AgentMetrics(self)
        self.watcher = StateWatcher(self.monitor, self.metrics)
        self._ipcache: dict[str, int] = {}
        self.host_addresses = Trigger("host-addresses", self._host_addresses_changed)
        self.address_watch = AddressWatch(self.host_addresses.fire)
        self.l7 = L7Gateway(
            config.state_dir / "proxy", lambda: self._ipcache, self.monitor, self._endpoint_of_ip
        )
        self.cluster: ClusterMode | None = None
        self.workloads = Workloads(self)
        self.runtimes = Runtimes()
        self.ct_gc = CtGc(
            self.datapath,
            self.monitor,
            config.ct_gc_interval,
            config.ct_gc_non_tcp_idle,
            config.ct_lifetime_nontcp,
        )

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        """Load the datapath, restore state from a previous run, start controllers."""
        for d in (self.config.run_dir, self.config.state_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        state = load_state(self.config.state_file)
        if state is not None and state.get("version") != STATE_VERSION:
            raise AgentError(f"state file {self.config.state_file} has an unknown version")
        if self.config.cluster_mode:
            self.cluster = ClusterMode(self)
            pod_cidr, ipv6_range = self.cluster.join((state or {}).get("pod_cidr"))
            ranges = {"pod_cidr": pod_cidr} | ({"ipv6_range": ipv6_range} if ipv6_range else {})
            self.config = self.config.updated("kvstore", **ranges)
            self.ipam = Ipam(pod_cidr, {self.config.host_router_ip})
            if self.ipam6 is not None:
                self.ipam6 = Ipam(ipv6_range, {self.config.host_router_ipv6})
            self.identities = self.cluster.member.identities
        previous_router = router_change(self.config, state)
        self.datapath.start()
        maps = self.datapath.maps_dir
        self.monitor.start_reader(f"{maps}/cilia_events", f"{maps}/cilia_events_lost")
        ensure_host_address(self.config.host_router_ip)
        if self.config.enable_ipv6:
            enable_ipv6_routing(self.config.host_router_ipv6)
        self.datapath.attach_proxy_device(proxy_device_name(self.config.name_prefix))
        if self.cluster is not None:
            self.datapath.attach_overlay(
                self.config.overlay_device,
                self.cluster.member.settings.underlay_ip,
                self.config.cluster_pod_cidr,
                port=self.config.vxlan_port,
                mtu=self.config.mtu,
                route_src=self.config.host_router_ip,
                cluster_cidr6=self.config.ipv6_cluster_alloc_cidr if self.ipam6 else "",
                route_src6=self.config.host_router_ipv6 or None,
            )
        with self.lock:
            if state is not None:
                self._restore(state)
            self.regenerate("agent start")
            self.save()
        if previous_router is not None and remove_host_address(previous_router):
            log.info("router address %s removed", previous_router)
        if self.cluster is not None:
            self.cluster.start()
        self.runtimes = Runtimes.start(self.config, self.workloads)
        self.controllers.add("sync-datapath", self.config.sync_interval, self._sync_controller)
        self.ct_gc.controller = self.controllers.add(
            "ct-gc", self.config.ct_gc_interval, self.ct_gc.run
        )
        self.controllers.add("metrics-sync", self.config.sync_interval, self.metrics.sync)
        self.controllers.add("monitor-reader", 5.0, self.monitor.supervise_reader)
        if self.config.prometheus_serve_addr:
            bound = self.metrics.serve(self.config.prometheus_serve_addr)
            log.info("serving Prometheus metrics on http://%s/metrics", bound)
        self.controllers.add("pod-processes", PROCESS_INTERVAL, self._process_controller)
        self.controllers.start()
        self.host_addresses.start()
        self.address_watch.start()
        log.info(
            "agent ready: %d endpoints restored, policy revision %d",
            len(self.endpoints),
            self.repo.revision,
        )

    def stop(self) -> None:
        """Stop controllers and close the datapath; pods and enforcement stay in place."""
        self.address_watch.stop()
        self.host_addresses.stop()
        self.runtimes.stop()
        self.controllers.stop()
        if self.cluster is not None:
            self.cluster.stop()
        self.metrics.stop()
        self.monitor.stop()
        self.l7.stop()
        with self.lock:
            self.save()
            self.datapath.close()

    def _restore(self, state: dict[str, Any]) -> None:
        if self.cluster is not None:
            held = held_identities(state["identities"])
            self.cluster.member.identities.restore(held)
            self.cidr.restore((ident, labels) for ident, (labels, _) in held.items())
        else:
            self.identities = IdentityAllocator.restore(state["identities"])
            self.cidr.restore(self.identities.items())
        self.repo = PolicyRepository.from_json(state["policy"])
        self.objects = ObjectStore.from_state(state["objects"])
        self.ipam_reserved = set(state.get("ipam_reserved", []))
        for ipam in filter(None, (self.ipam, self.ipam6)):
            ipam.used |= self.ipam_reserved  # either family's: the other's never matches
        self.responders = ResponderHost.of(self.config.run_dir, self.config.state_dir, state)
        for raw in state["endpoints"]:
            ep = Endpoint.from_state(raw)
            if not ep.is_local_pod and not is_netns(ep.netns):
                log.info("container %s went away while the agent was down", ep.container_id)
                remove_pod_network(ep.netns, ep.ifname, ep.ipv4, ep.ipv6)
                self.identities.release(ep.identity)
                self._give_back_address(ep)
                continue
            self.endpoints[ep.id] = ep
            self.ipam.used.add(ep.ipv4)
            if self.ipam6 is None:
                ep.ipv6 = ""  # IPv6 was turned off: the datapath drops the pod's IPv6
            elif ep.ipv6:
                self.ipam6.used.add(ep.ipv6)
            try:
                if ep.is_local_pod:
                    pods.create_sandbox(self._local_netns(ep.namespace, ep.pod))
                # Reuses the devices and routes when they are intact.
                ep.network = self._pod_network(ep)
                self.datapath.attach(ep.ifname, ep.network.host_ifindex)
                self._supervise(ep)
                ep.set_state(EndpointState.WAITING_TO_REGENERATE, "restored after agent restart")
            except Exception as exc:  # keep the others; this one is reported
                ep.set_state(EndpointState.NOT_READY, f"restore failed: {exc}")
                log.error("restoring endpoint %s failed: %s", ep.name, exc)

    def save(self) -> None:
        save_state(
            self.config.state_file,
            {
                "version": STATE_VERSION,
                "pod_cidr": self.config.pod_cidr,
                "router_ip": self.config.host_router_ip,
                "router_ipv6": self.config.host_router_ipv6,
                "identities": self.identities.snapshot(),
                "policy": self.repo.to_json(),
                "objects": self.objects.to_state(),
                "endpoints": [ep.to_state() for ep in self.endpoints.values()],
                "ipam_reserved": sorted(self.ipam_reserved),
                "responder_host": self.responders.record and self.responders.record.to_dict(),
            },
        )

    def program(self, ep: Endpoint) -> tuple[int, int]:
        """Write an endpoint's policy (with its proxies' ports) and flags into the
        datapath; returns (entries written, entries removed)."""
        assert ep.network is not None
        proxy_ports = self.l7.update(ep.id, ep.policy.redirects, ep.identity)
        return self.datapath.program_endpoint(
            ep.network.host_ifindex,
            ep.id,
            ep.ipv4,
            ep.identity,
            ep.policy,
            ep.network.host_mac,
            trace=ep.trace,
            proxy_ports=proxy_ports,
            ipv6=ep.ipv6,
        )

    # -- regeneration ------------------------------------------------------

    def regenerate(self, reason: str, full: bool = False) -> None:
        """Bring every endpoint's kernel state to the current desired state.

        When only rules changed (same identities), endpoints that no added or
        removed rule selects keep their policy and are not reprogrammed.
        """
        rules = self._policy_rules()
        self.cidr.sync(self.identities, rule_prefixes(rules))
        identities = {**RESERVED_LABELS, **dict(self.identities.items())}
        old = self.resolver
        if not full and old is not None and old.cache.identities == identities:
            resolver = old.updated(rules)
            changed: list[Rule] | None = old.changed_rules(resolver)
        else:
            resolver = PolicyResolver(
                rules,
                identities,
                host_allows_world=self.config.legacy_host_allows_world,
                allow_localhost=self.config.allow_localhost == "always",
            )
            changed = None
        self.resolver = resolver
        self._sync_ipcache()
        local = {ep.identity: ep.labels for ep in self.endpoints.values() if ep.network}
        ingress_of = functools.cache(lambda identity: resolver.resolve(local[identity]).redirects)
        for ep in self.endpoints.values():
            if ep.network is None or ep.state is EndpointState.NOT_READY:
                continue
            if (
                changed is not None
                and ep.state is EndpointState.READY
                and not PolicyResolver.affects(changed, ep.labels)
                and not has_egress_redirects(ep.policy)  # they follow local peers' rules
            ):
                ep.policy_revision = self.repo.revision
                continue
            ep.set_state(EndpointState.REGENERATING, reason)
            policy = resolver.resolve(ep.labels)
            ep.policy = dataclasses.replace(
                policy,
                redirects=chain_local_ingress(policy.redirects, ep.identity, local, ingress_of),
            )
            try:
                added, removed = self.program(ep)
            except Exception as exc:
                self.watcher.endpoint_failed(ep, exc)
                raise
            ep.policy_revision = self.repo.revision
            self.watcher.endpoint_regenerated(ep, reason, added, removed)
            ep.set_state(
                EndpointState.READY,
                f"regenerated ({reason}): revision {self.repo.revision}, "
                f"+{added}/-{removed} policy entries",
            )
        self.realized_revision = self.repo.revision
        self._sync_services()
        self.watcher.after_regenerate(self, reason)
        if self.cluster is not None:
            self.cluster.publish()

    def _sync_services(self) -> None:
        """Services' endpoints and load-balancer table, from the objects and pods now."""
        self.services.sync(self.objects, self.pod_status())

    def _policy_rules(self) -> list[Rule]:
        """The repository's rules with `toServices` resolved against Services/Endpoints."""
        return self._translate_services(self.repo.rules, self.objects.services())

    def _sync_ipcache(self) -> None:
        """Program the ipcache (and in cluster mode the tunnels) as desired now."""
        ipcache = self._ipcache_desired()
        tunnel_endpoints: dict[str, str] = {}
        if self.cluster is not None:
            remote, tunnel_endpoints = self.cluster.remote_entries(ipcache)
            ipcache |= remote
            self.datapath.sync_tunnels(self.cluster.member.tunnels())
        self.datapath.sync_ipcache(ipcache, self.cidr.identities(), tunnel_endpoints)
        if ipcache != self._ipcache:
            self._ipcache = ipcache
            self.l7.refresh()

    def _host_addresses_changed(self, reasons: list[str]) -> None:
        """Node addresses are host in legacy mode: the ipcache follows them at once, as
        do NodePort frontends (on every node address)."""
        with self.lock:
            self._sync_ipcache()
            self._sync_services()
        log.info("%s: ipcache and services updated", "; ".join(reasons))

    def _ipcache_desired(self) -> dict[str, int]:
        """Endpoints, CIDR prefixes and the router address (host); other node addresses
        are world unless the legacy option makes every node address host."""
        desired = self.cidr.ipcache()
        if self.config.legacy_host_allows_world:
            for ip in host_addresses(ipv6=self.config.enable_ipv6):
                desired[f"{ip}/128" if ":" in ip else f"{ip}/32"] = HOST
        desired[f"{self.config.host_router_ip}/32"] = HOST
        if self.config.enable_ipv6:
            desired[f"{self.config.host_router_ipv6}/128"] = HOST
        for ep in self.endpoints.values():
            desired[f"{ep.ipv4}/32"] = ep.identity
            if ep.ipv6:
                desired[f"{ep.ipv6}/128"] = ep.identity
        return desired

    # -- objects (manifests) ---------------------------------------------

    def apply(self, manifests: list[Manifest]) -> list[dict[str, str]]:
        """Create or update objects; returns one {object, action} line per manifest.

        In cluster mode the objects go to the store in one versioned transaction (pods
        placed on nodes first) and every agent, this one included, applies them from
        its watch; the call returns once this node has.
        """
        if self.cluster is not None:
            return self.cluster.apply(manifests)
        with self.lock:
            try:
                manifests = self.services.assign(manifests, self.objects)
                self.objects.plan_apply(manifests)
            except (ObjectConflict, ServiceError) as exc:
                raise AgentError(str(exc)) from None
            results, errors = self.apply_objects(manifests, from_store=False)
            self.regenerate("objects applied")
            self.save()
            if errors:
                raise AgentError("; ".join(errors), status=500)
            return results

    def apply_objects(
        self, manifests: list[Manifest], from_store: bool
    ) -> tuple[list[dict[str, str]], list[str]]:
        """Store objects locally and start the new pods that run on this node.

        Objects from the cluster store are the truth: a pod whose spec changed there is
        re-created, and one that fails to start here stays stored (and is reported).
        """
        if from_store:
            for m in manifests:
                old = self.objects.get(m.key)
                if isinstance(old, Pod) and isinstance(m, Pod) and old.spec != m.spec:
                    self.delete_key(m.key)
        results: list[dict[str, str]] = []
        new_pods: list[tuple[Pod, dict[str, str]]] = []
        for obj, action in self.objects.plan_apply(manifests):
            result = {"object": display(obj), "action": action}
            results.append(result)
            if action == "unchanged":
                continue
            if isinstance(obj, NetworkPolicy | CiliumNetworkPolicy):
                revision = self.repo.replace(obj.owner_labels, obj.rules())
                self.policy_updated[obj.key] = (revision, time.time(), "")
            self.objects.put(obj)
            if isinstance(obj, Pod) and action == "created" and self._runs_here(obj):
                new_pods.append((obj, result))
        self.relabel_endpoints()
        errors: list[str] = []
        for pod, result in new_pods:
            try:
                self.create_pod(pod)
            except KvstoreUnavailable as exc:
                assert self.cluster is not None  # only a cluster store is unreachable
                self.cluster.wait_for_store(pod, exc)
                result["action"] = "waiting-for-identity"
            except Exception as exc:
                log.error("pod %s failed: %s", display(pod), exc)
                if not from_store:
                    self.objects.remove(pod.key)
                errors.append(f"{display(pod)}: {exc}")
                result["action"] = "failed"
        return results, errors

    def _runs_here(self, pod: Pod) -> bool:
        return self.cluster is None or self.cluster.runs_here(pod)

    def delete(self, manifests: list[Manifest]) -> list[dict[str, str]]:
        """Delete the objects named by manifests."""
        if self.cluster is not None:
            return self.cluster.delete(manifests)
        with self.lock:
            results = [{"object": display(m), "action": self.delete_key(m.key)} for m in manifests]
            self.relabel_endpoints()
            self.regenerate("objects deleted")
            self.save()
            return results

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete one pod by name."""
        key = f"Pod/{namespace}/{name}"
        if self.cluster is not None:
            with self.lock:
                pod = self.objects.get(key)
            if pod is None or self.cluster.delete([pod])[0]["action"] == "not found":
                raise AgentError(f"pod {namespace}/{name} not found", status=404)
            return
        with self.lock:
            if self.delete_key(key) == "not found":
                raise AgentError(f"pod {namespace}/{name} not found", status=404)
            self.regenerate("pod deleted")
            self.save()

    def delete_key(self, key: str) -> str:
        obj = self.objects.get(key)
        if obj is None:
            return "not found"
        if isinstance(obj, Pod):
            ep = self.endpoint_of(obj.namespace, obj.name)
            if ep is not None:
                self._destroy_endpoint(ep)
        elif isinstance(obj, NetworkPolicy | CiliumNetworkPolicy):
            self.repo.replace(obj.owner_labels, [])
        self.objects.remove(key)
        return "deleted"

    def relabel_endpoints(self) -> None:
        """Recompute identities after pod, namespace or runtime labels changed."""
        for ep in self.endpoints.values():
            labels = self._endpoint_labels(ep)
            if labels is not None and labels != ep.labels:
                old = ep.identity
                try:
                    ep.identity = self.identities.allocate(labels)
                except KvstoreUnavailable:
                    # Keeps its identity and policy until the store answers again.
                    ep.set_state(EndpointState.WAITING_FOR_IDENTITY, "kvstore unreachable")
                    assert self.cluster is not None  # only a cluster store is unreachable
                    self.cluster.relabel_pending = True
                    continue
                ep.labels = labels
                self.identities.release(old)
                ep.set_state(
                    EndpointState.WAITING_TO_REGENERATE,
                    f"labels changed: identity {old} -> {ep.identity}",
                )

    def _security_labels(self, pod: Pod, ep: Endpoint | None = None) -> Labels:
        """The pod's identity labels; `reserved:init` alone while they are held back."""
        held = pod.metadata.annotations.get(INIT_ANNOTATION) == "hold"
        if held and (ep is None or not ep.labels_released):
            return RESERVED_LABELS[INIT]
        labels = pod.identity_labels(self.objects.namespace_labels(pod.namespace))
        return labels.union(ep.extra_labels) if ep is not None else labels

    def _endpoint_labels(self, ep: Endpoint) -> Labels | None:
        """An endpoint's identity labels now: a local pod's from its Pod object (None
        when it has none), a container's from its runtime (`reserved:init` until known)."""
        if ep.is_local_pod:
            pod = self.objects.pod(ep.namespace, ep.pod)
            return None if pod is None else self._security_labels(pod, ep)
        if ep.runtime_labels is None:
            return RESERVED_LABELS[INIT]
        return ep.runtime_labels.union(ep.extra_labels)

    def _pod_network(self, ep: Endpoint) -> PodNetwork:
        # In tunnel mode what a pod sends must fit the VXLAN encapsulation, while its
        # device keeps the full MTU so that it receives 1500-byte packets unfragmented.
        tunnel = self.cluster is not None
        if ep.peer_in_host:
            # The runtime sets the workload's routes: only the device MTU can fit the tunnel.
            src, src6 = self.config.host_router_ip, self.config.host_router_ipv6 or None
            if ep.network is not None:
                net = dataclasses.replace(ep.network, ipv6=ep.ipv6)
                return restore_host_peer_veth(net, route_src=src, route_src6=src6)
            mtu = self.config.mtu - VXLAN_OVERHEAD if tunnel else self.config.mtu
            return ensure_host_peer_veth(
                ep.netns, ep.ifname, ep.pod_ifname, ep.ipv4, mtu, src, ep.ipv6, src6
            )
        return ensure_pod_network(
            ep.netns,
            ep.ifname,
            ep.ipv4,
            self.config.mtu,
            route_src=self.config.host_router_ip,
            route_mtu=self.config.mtu - VXLAN_OVERHEAD if tunnel else None,
            pod_ifname=ep.pod_ifname,
            ipv6=ep.ipv6,
            route_src6=self.config.host_router_ipv6 or None,
        )

    # -- endpoints --------------------------------------------------------

    def _next_endpoint_id(self) -> int:
        used = set(self.endpoints)
        return next(i for i in range(1, 65536) if i not in used)

    def endpoint_of(self, namespace: str, pod: str) -> Endpoint | None:
        """The endpoint of a local pod."""
        cid = local_container_id(namespace, pod)
        return next((e for e in self.endpoints.values() if e.container_id == cid), None)

    def _local_netns(self, namespace: str, pod: str) -> str:
        return pod_netns_name(self.config.name_prefix, namespace, pod)

    def create_pod(self, pod: Pod) -> None:
        """Run a local pod: its namespace, its endpoint (through the same path as any
        runtime's container) and its processes; on failure nothing is left behind."""
        netns = self._local_netns(pod.namespace, pod.name)
        path = pods.create_sandbox(netns)
        req = EndpointRequest(
            container_id=local_container_id(pod.namespace, pod.name),
            netns=path,
            runtime="local",
            namespace=pod.namespace,
            name=pod.name,
        )
        ep: Endpoint | None = None
        try:
            ep = self._create_endpoint(req, self._security_labels(pod))
            specs = pods.container_specs(pod)
            log_dir, now = self._log_dir(ep), time.time()
            ep.containers = supervisor.start_containers(path, specs, log_dir, now, self.responders)
            for spec, status in zip(specs, ep.containers, strict=True):
                status.ready = spec.readiness is None  # else its probe decides
        except BaseException as exc:
            if ep is not None:
                self._destroy_endpoint(ep)
            pods.remove_sandbox(netns, [], self.responders)
            if isinstance(exc, supervisor.ContainerStartError):
                raise AgentError(f"pod {pod.namespace}/{pod.name}: {exc}", status=422) from None
            raise

    def _create_endpoint(self, req: EndpointRequest, labels: Labels) -> Endpoint:
        """Attach a namespace: veth, address, identity, default-deny programs; the next
        regeneration enforces its policy. On failure nothing of it is left behind."""
        for family, ip in (("ipv4", req.ipv4), ("ipv6", req.ipv6)):
            if ip is not None and ip not in self.ipam_reserved:
                raise AgentError(f"{family} {ip} was not reserved with POST /v1/ipam", status=409)
        reserved = req.ipv4 is not None  # then all its addresses are (the runtime's)
        prefix = self.config.name_prefix
        ifname = (
            host_ifname(prefix, req.namespace or "", req.name or "")
            if req.runtime == "local"
            else host_ifname(prefix, req.container_id, req.interface_name)
        )
        ep = Endpoint(
            id=self._next_endpoint_id(),
            namespace=req.namespace or req.runtime,
            pod=req.name or req.container_id,
            netns=req.netns,
            ifname=ifname,
            ipv4=req.ipv4 or self.ipam.allocate(),
            labels=labels,
            # Runtimes that configure the workload side themselves (Docker) reserve it.
            ipv6=req.ipv6
            or (self.ipam6.allocate() if self.ipam6 and not (reserved or req.peer_in_host) else ""),
            container_id=req.container_id,
            runtime=req.runtime,
            pod_ifname=req.interface_name,
            peer_in_host=req.peer_in_host,
            gateway=self.config.host_router_ip if req.peer_in_host else GATEWAY_IP,
            address_reserved=reserved,
            runtime_labels=None if req.labels is None else labels,
        )
        self.ipam_reserved -= {ep.ipv4, ep.ipv6}
        ep.set_state(EndpointState.CREATING, f"endpoint created by {req.runtime}")
        identity_taken = False
        try:
            ep.identity = self.identities.allocate(labels)
            identity_taken = True
            ep.network = self._pod_network(ep)
            # The policy is enforced (its L7 ports through their proxies) before the
            # programs see any packet; the next regeneration completes it.
            ep.policy = PolicyResolver(
                self._policy_rules(),
                dict(self.identities.items()),
                host_allows_world=self.config.legacy_host_allows_world,
                allow_localhost=self.config.allow_localhost == "always",
            ).resolve(labels)
            self.program(ep)
            self.datapath.attach(ep.ifname, ep.network.host_ifindex)
        except BaseException:
            self.l7.update(ep.id, frozenset())
            self.datapath.detach(ep.ifname)
            if ep.network is not None:
                self.datapath.remove_endpoint(ep.network.host_ifindex, ep.id)
            remove_pod_network(ep.netns, ep.ifname, ep.ipv4, ep.ipv6)
            self._give_back_address(ep)
            if identity_taken:
                self.identities.release(ep.identity)
            raise
        ep.set_state(EndpointState.WAITING_TO_REGENERATE, "network ready")
        self.endpoints[ep.id] = ep
        return ep

    def _endpoint_of_ip(self, ip: str) -> tuple[int, int] | None:
        """(endpoint id, identity) of a local endpoint address."""
        ep = next((e for e in list(self.endpoints.values()) if ip in (e.ipv4, e.ipv6)), None)
        return (ep.id, ep.identity) if ep else None

    def _destroy_endpoint(self, ep: Endpoint) -> None:
        ep.set_state(EndpointState.DISCONNECTING, "deleted")
        self.l7.update(ep.id, frozenset())
        self.datapath.detach(ep.ifname)
        if ep.network is not None:
            self.datapath.remove_endpoint(ep.network.host_ifindex, ep.id)
        conntrack.flush(self.datapath.ct, ep.id)
        if ep.is_local_pod:
            netns = self._local_netns(ep.namespace, ep.pod)
            pods.remove_sandbox(netns, ep.containers, self.responders)
        remove_pod_network(ep.netns, ep.ifname, ep.ipv4, ep.ipv6)
        self._give_back_address(ep)
        self.identities.release(ep.identity)
        self.endpoints.pop(ep.id, None)

    def _give_back_address(self, ep: Endpoint) -> None:
        """Free an endpoint's address, or return it to the reservations of the runtime
        that took it with `POST /v1/ipam` (the runtime releases it itself)."""
        for ipam, ip in ((self.ipam, ep.ipv4), (self.ipam6, ep.ipv6)):
            if not ip or ipam is None:
                continue
            if ep.address_reserved:
                ipam.used.add(ip)
                self.ipam_reserved.add(ip)
            else:
                ipam.release(ip)

    def _log_dir(self, ep: Endpoint) -> Path:
        return self.config.state_dir / "logs" / ep.namespace / ep.pod

    def _supervise(self, ep: Endpoint) -> bool:
        """Restart a local pod's exited containers per its restartPolicy; True when
        something changed."""
        pod = self.objects.pod(ep.namespace, ep.pod) if ep.is_local_pod else None
        if pod is None:
            return False
        specs, now, log_dir = pods.container_specs(pod), time.time(), self._log_dir(ep)
        if [c.name for c in ep.containers] != [s.name for s in specs]:
            supervisor.stop_containers(ep.containers, self.responders)  # an older agent's
            pods.kill_netns_processes(self._local_netns(ep.namespace, ep.pod))
            ep.containers = supervisor.start_containers(
                ep.netns, specs, log_dir, now, self.responders
            )
            events = ["containers started again"]
        else:
            policy = pod.spec.restartPolicy
            events = supervisor.supervise(
                ep.netns, specs, ep.containers, policy, log_dir, now, self.responders
            )
        for event in events:
            log.info("pod %s: %s", ep.name, event)
            ep.log.append({"time": now, "state": ep.state.value, "message": event})
        return bool(events)

    def _probes_due(self) -> list[tuple[Endpoint, supervisor.ContainerSpec, int]]:
        """(endpoint, container, index) of every readiness check due now."""
        now, due = time.time(), []
        for ep in self.endpoints.values():
            pod = self.objects.pod(ep.namespace, ep.pod) if ep.is_local_pod else None
            if pod is None:
                continue
            for i, spec in enumerate(pods.container_specs(pod)):
                if i < len(ep.containers) and supervisor.probe_due(spec, ep.containers[i], now):
                    due.append((ep, spec, i))
        return due

    def regenerate_endpoint(self, key: str) -> Endpoint:
        """Re-attach the programs of one endpoint if they are missing and reprogram it."""
        with self.lock:
            ep = self.endpoint(key)
            if ep.network is None:
                raise AgentError(f"endpoint {key} has no network", status=409)
            self.datapath.attach(ep.ifname, ep.network.host_ifindex)
            self.regenerate(f"regeneration of endpoint {ep.id} requested", full=True)
            return ep

    def endpoint_labels(self, key: str, add: list[str], delete: list[str]) -> Endpoint:
        """Add and delete (by key) labels of an endpoint; releases labels held back.

        The endpoint moves to the identity of its new labels within one regeneration.
        """
        with self.lock:
            ep = self.endpoint(key)
            try:
                added = Labels.parse(add)
                gone = {Label.parse(d).key for d in delete}
            except ValueError as exc:
                raise AgentError(str(exc)) from None
            kept = [lb for lb in ep.extra_labels if lb.key not in gone]
            ep.extra_labels = Labels([*kept, *added])
            ep.labels_released = True
            self.relabel_endpoints()
            self.regenerate(f"labels of endpoint {ep.id} changed")
            self.save()
            return ep

    def policy_status(self, key: str, annotations: dict[str, str]) -> dict[str, Any]:
        """`status` of a CiliumNetworkPolicy object: this node's view of it."""
        revision, updated, error = self.policy_updated.get(key, (self.repo.revision, 0.0, ""))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(updated or self.started_at))
        node = {
            "ok": not error,
            "error": error,
            "enforcing": not error and self.realized_revision >= revision,
            "localPolicyRevision": revision,
            "lastUpdated": stamp,
        }
        if annotations:
            node["annotations"] = dict(annotations)
        return {"nodes": {self.config.node_name: node}}

    # -- policy -------------------------------------------------------------

    def policy_import(self, rules: list[Rule]) -> int:
        """Add rules; returns once the datapath enforces the new revision."""
        with self.lock:
            revision = self.repo.add(rules)
            self.regenerate(f"policy import, revision {revision}")
            self.save()
            return revision

    def policy_delete(self, labels: Labels | None) -> tuple[int, int]:
        """Delete rules carrying all labels (all rules when None); (revision, deleted)."""
        with self.lock:
            if labels is None:
                deleted = len(self.repo.rules)
                revision = self.repo.delete_all()
            else:
                revision, deleted = self.repo.delete_by_labels(labels)
            self.regenerate(f"policy delete, revision {revision}")
            self.save()
            return revision, deleted

    # -- read side -------------------------------------------------------

    def endpoint(self, key: str) -> Endpoint:
        """Find an endpoint by id, `ns/pod`, IPv4 or IPv6 address or `container-id:<id>`."""
        with self.lock:
            for ep in self.endpoints.values():
                keys = (str(ep.id), ep.name, ep.ipv4, ep.ipv6, f"container-id:{ep.container_id}")
                if key and key in keys:
                    return ep
        raise AgentError(f"endpoint {key} not found", status=404)

    def remote_pod(self, ref: str) -> dict[str, Any] | None:
        """Status of a pod of another node (`ns/name`), as its node published it."""
        return self.cluster.remote_pod(ref) if self.cluster is not None else None

    def pod_address(self, ref: str, family: int = 4) -> str:
        """IPv4 (or IPv6, "" when it has none) of a pod of this node or, in cluster mode,
        of any node."""
        key = "ipv6" if family == 6 else "ipv4"
        remote = self.remote_pod(ref)
        if remote:
            return str(remote.get(key) or "")
        return str(getattr(self.endpoint(ref), key))

    def pod_names(self, namespaces: list[str], local_only: bool) -> list[str]:
        """`ns/name` of the pods with an address here (and on every node unless
        `local_only`), optionally of some namespaces only."""
        names = {ep.name for ep in self.endpoints.values()}
        if not local_only and self.cluster is not None:
            names |= self.cluster.addressed_pods()
        return sorted(n for n in names if not namespaces or n.split("/", 1)[0] in namespaces)

    def pod_netns(self, namespace: str, name: str) -> str:
        """Path of a pod's network namespace (for exec and probes)."""
        ep = self.endpoint_of(namespace, name) or self.endpoint(f"{namespace}/{name}")
        return ep.netns

    def status(self) -> dict[str, Any]:
        """Health summary for `cilia status`."""
        # Outside the lock: asking an unreachable store takes its timeout.
        kvstore = self.cluster.member.status() if self.cluster else {"backend": "none"}
        with self.lock:
            failing = self.controllers.failing()
            healthy = not failing and kvstore.get("healthy", True)
            return {
                "cilia": "Ok" if healthy else "Warning",
                "node": self.config.node_name,
                "datapath": {
                    "mode": "tcx",
                    "programs-attached": sum(
                        1
                        for ep in self.endpoints.values()
                        if ep.network
                        and self.datapath.is_attached(ep.ifname, ep.network.host_ifindex)
                    ),
                    "proxy-device": self.datapath.proxy_ifname,
                    "pin-dir": str(self.config.bpf_dir),
                },
                "endpoints": len(self.endpoints),
                "endpoints-ready": sum(
                    1 for ep in self.endpoints.values() if ep.state is EndpointState.READY
                ),
                "identities": len(self.identities.items()),
                "policy-revision": self.repo.revision,
                "realized-revision": self.realized_revision,
                "policy-rules": len(self.repo.rules),
                "pod-cidr": self.config.pod_cidr,
                "ipv6-range": self.config.ipv6_range if self.config.enable_ipv6 else "",
                "controllers": {"total": len(self.controllers.all()), "failing": len(failing)},
                "conntrack": self.ct_gc.status(),
                "monitor": self.monitor.status(),
                "metrics": {"address": self.metrics.address},
                "proxy": self.l7.status(),
                "services": self.services.status(),
                "uptime-seconds": round(time.time() - self.started_at, 1),
                "kvstore": kvstore,
                "container-runtimes": self.runtimes.health(),
            }

    @staticmethod
    def pod_row(ep: Endpoint) -> dict[str, Any]:
        containers = ep.containers
        return {
            "ipv4": ep.ipv4,
            "ipv6": ep.ipv6,
            "identity": ep.identity,
            "endpoint": ep.id,
            "state": ep.state.value,
            "phase": supervisor.pod_phase(containers),
            "ready": f"{sum(c.ready for c in containers)}/{len(containers)}",
            "restarts": sum(c.restarts for c in containers),
            "containers": [
                {k: c.to_dict()[k] for k in ("name", "ready", "state", "restarts", "exit_code")}
                for c in containers
            ],
        }

    def pod_status(self) -> dict[str, dict[str, Any]]:
        """Per pod key: node, address, identity and endpoint state (for `cilia get pods`);
        in cluster mode pods of other nodes as their node published them."""
        rows = self.cluster.pod_rows() if self.cluster is not None else {}
        for ep in self.endpoints.values():
            rows[f"Pod/{ep.namespace}/{ep.pod}"] = {
                "node": self.config.node_name,
                **self.pod_row(ep),
            }
        return rows

    # -- controllers -------------------------------------------------------

    def _sync_controller(self) -> str:
        with self.lock:
            report = self.datapath.verify()
            for ep in self.endpoints.values():
                if ep.network and not self.datapath.is_attached(ep.ifname, ep.network.host_ifindex):
                    self.datapath.attach(ep.ifname, ep.network.host_ifindex)
                    report.repaired.append(f"programs re-attached to {ep.ifname}")
            if self.datapath.ensure_proxy_device():
                report.repaired.append("proxy device re-created")
            return f"{len(report.repaired)} repairs"

    def _process_controller(self) -> str:
        """Restarts exited containers, then runs the readiness checks that are due
        (outside the lock: a probe may take its timeout)."""
        with self.lock:
            self.responders.refresh()
            changed = {ep.name for ep in self.endpoints.values() if self._supervise(ep)}
            due = self._probes_due()
        results = [(ep, spec, i, supervisor.check_ready(ep.netns, spec)) for ep, spec, i in due]
        with self.lock:
            now = time.time()
            for ep, spec, i, ok in results:
                current = self.endpoints.get(ep.id) is ep and i < len(ep.containers)
                if current and supervisor.record_probe(spec, ep.containers[i], ok, now):
                    changed.add(ep.name)
            if changed:
                self.save()
                self._sync_services()
                if self.cluster is not None:
                    self.cluster.publish()
        return f"changed {', '.join(sorted(changed))}" if changed else "no change"
