"""Services as the agent runs them: ClusterIPs and node ports given at apply, the
endpoints controller's Endpoints from the pods' status, and the load-balancer table
(`service/`, pure) written into the datapath after every change.

The agent calls `assign` before it stores Services (in cluster mode before the
transaction, so every node stores the same addresses) and `sync` after every
regeneration, readiness change and node address change.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cilia.agent.config import AgentConfig
from cilia.agent.objects import ObjectStore
from cilia.datapath.events import host_port
from cilia.datapath.manager import Datapath
from cilia.datapath.proxy_device import proxy_device_name
from cilia.datapath.service_hooks import node_devices
from cilia.k8s.manifests import Endpoints, Manifest, Pod, Service
from cilia.service.allocate import allocate
from cilia.service.endpoints import endpoints_for, pod_info
from cilia.service.model import LbService, PodInfo, ServiceRanges
from cilia.service.table import endpoints_key, lb_services

log = logging.getLogger("cilia.agent")


@dataclass(frozen=True)
class _Entries:
    service: Service
    endpoints: Endpoints | None
    addresses: tuple[str, ...]
    table: list[LbService]


class Services:
    """The node's services: assignment at apply, endpoints and the datapath's table."""

    def __init__(self, config: AgentConfig, datapath: Datapath) -> None:
        self.config = config
        self.datapath = datapath
        self.ranges = ServiceRanges(
            config.service_cidr,
            config.ipv6_service_cidr if config.enable_ipv6 else "",
            config.node_ports,
        )
        self.endpoints: dict[str, Endpoints] = {}
        """Endpoints of the services with a selector, by key (the controller's output)."""
        self.table: list[LbService] = []
        self.devices: dict[str, tuple[int, list[str]]] = {}
        """NodePort devices: name -> (ifindex, addresses)."""
        self._entries: dict[str, _Entries] = {}
        """Per service key: what its entries were made from, and them."""
        self._pods: dict[str, list[PodInfo]] = {}
        """The pods of each namespace at the last sync (their changes redo Endpoints)."""

    def assign(self, manifests: list[Manifest], store: ObjectStore) -> list[Manifest]:
        """`manifests` with every Service given its ClusterIP and node ports (raises
        ServiceError, naming the service and field, for one that cannot have them)."""
        new = [m for m in manifests if isinstance(m, Service)]
        if not new:
            return manifests
        stored = [s for s in store.of_kind("Service") if isinstance(s, Service)]
        done = {s.key: s for s in allocate(new, stored, self.ranges)}
        return [done.get(m.key, m) for m in manifests]

    def _node_devices(self) -> dict[str, tuple[int, list[str]]]:
        cfg = self.config
        own = [cfg.name_prefix, "lxc", cfg.overlay_device, proxy_device_name(cfg.name_prefix)]
        found = node_devices(own)
        if cfg.nodeport_devices:
            return {n: v for n, v in found.items() if n in cfg.nodeport_devices}
        return found

    def sync(self, store: ObjectStore, pod_status: Mapping[str, Mapping[str, Any]]) -> None:
        """Recompute endpoints and the table, and write what changed. A service whose
        object, Endpoints and node addresses are those of the last sync keeps its
        entries (the objects are immutable: identity says unchanged), so a change of
        one service among thousands costs about one service."""
        services = [s for s in store.of_kind("Service") if isinstance(s, Service)]
        endpoints = self._endpoints(services, store, pod_status)
        nodeport = any(s.spec.type == "NodePort" for s in services)
        self.devices = self._node_devices() if nodeport else {}
        addresses = tuple(ip for _, ips in self.devices.values() for ip in ips)
        entries: dict[str, _Entries] = {}
        for svc in services:
            ep = endpoints.get(endpoints_key(svc))
            old = self._entries.get(svc.key)
            if old and old.service is svc and old.endpoints is ep and old.addresses == addresses:
                entries[svc.key] = old
            else:
                made = lb_services([svc], {ep.key: ep} if ep else {}, addresses)
                entries[svc.key] = _Entries(svc, ep, addresses, made)
        self._entries = entries
        table = sorted(
            (e for cached in entries.values() for e in cached.table),
            key=lambda s: (s.service, s.port_name, s.kind, s.frontend),
        )
        report = self.datapath.sync_services(
            table, {name: index for name, (index, _) in self.devices.items()}
        )
        self.table = table
        if report.added or report.changed or report.removed:
            log.info(
                "services: %d frontends added, %d changed, %d removed, %d flows ended",
                report.added,
                report.changed,
                report.removed,
                report.flows_ended,
            )

    def _endpoints(
        self,
        services: Sequence[Service],
        store: ObjectStore,
        pod_status: Mapping[str, Mapping[str, Any]],
    ) -> dict[str, Endpoints]:
        """Endpoints of every service: the controller's for those with a selector (the
        previous object again while its service and its namespace's pods are unchanged),
        the stored (hand-written) ones for the others."""
        infos: dict[str, list[PodInfo]] = {}
        if any(svc.spec.selector is not None for svc in services):
            for p in store.of_kind("Pod"):
                if isinstance(p, Pod):
                    infos.setdefault(p.namespace, []).append(pod_info(p, pod_status.get(p.key)))
        changed = {
            ns for ns in infos.keys() | self._pods.keys() if infos.get(ns) != self._pods.get(ns)
        }
        self._pods = infos
        computed: dict[str, Endpoints] = {}
        out: dict[str, Endpoints] = {}
        for svc in services:
            key = endpoints_key(svc)
            if svc.spec.selector is not None:
                old = self._entries.get(svc.key)
                if old is not None and old.service is svc and svc.namespace not in changed:
                    ep = old.endpoints
                else:
                    ep = endpoints_for(svc, infos.get(svc.namespace, []))
                if ep is not None:
                    computed[key] = out[key] = ep
            elif isinstance(stored := store.get(key), Endpoints):
                out[key] = stored
        self.endpoints = computed
        return out

    def status(self) -> dict[str, Any]:
        """For `cilia status`: ranges, frontends, and the NodePort devices."""
        return {
            "service-cidr": self.ranges.cidr4,
            "ipv6-service-cidr": self.ranges.cidr6,
            "node-ports": "-".join(map(str, self.ranges.node_ports)),
            "frontends": len(self.table),
            "nodeport-frontends": sum(s.kind == "NodePort" for s in self.table),
            "nodeport-devices": sorted(self.devices),
        }

    def add_backends(self, items: list[dict[str, Any]]) -> None:
        """Rows of `cilia get services`: the backends of services with a selector are
        the ready addresses of the controller's Endpoints."""
        for item in items:
            ep = self.endpoints.get(f"Endpoints/{item['namespace']}/{item['name']}")
            if ep is not None:
                item["backends"] = ep.addresses

    def rows(self) -> list[dict[str, Any]]:
        """`cilia service list`: one row per frontend, with its id in the datapath."""
        ids = {fe: rec.rev_nat for fe, rec in self.datapath.lb.realized.items()}
        return [
            {
                "id": ids.get(s.frontend, 0),
                "service": s.service,
                "port-name": s.port_name,
                "type": s.kind,
                "frontend": host_port(s.frontend.address, s.frontend.port),
                "protocol": s.frontend.protocol,
                "backends": [host_port(b.address, b.port) for b in s.backends],
            }
            for s in self.table
        ]
