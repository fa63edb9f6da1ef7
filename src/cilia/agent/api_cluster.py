"""REST routes of cluster mode: nodes, the kvstore commands, the tunnel map and the
ipcache with its tunnel endpoints."""

from __future__ import annotations

import time
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from cilia.agent.daemon import Agent
from cilia.agent.errors import AgentError
from cilia.kvstore.client import KvstoreUnavailable
from cilia.kvstore.member import ClusterMember

HEALTHY_HEARTBEATS = 3
"""A node whose heartbeat is older than this many keepalive intervals is `stale`."""


class KvSetRequest(BaseModel):
    """`cilia kvstore set KEY VALUE`."""

    key: str
    value: str


def cluster_router(agent: Agent) -> APIRouter:
    """Routes bound to one agent; 409 when it does not run in cluster mode."""
    r = APIRouter()

    def member() -> ClusterMember:
        if agent.cluster is None:
            raise AgentError("this agent does not run in cluster mode (--kvstore etcd)", 409)
        return agent.cluster.member

    @r.get("/v1/cluster/nodes")
    def nodes() -> list[dict[str, Any]]:
        m = member()
        stale_after = HEALTHY_HEARTBEATS * agent.config.lease_keepalive
        return [
            {
                "name": n.name,
                "underlay-ip": n.underlay_ip,
                "pod-cidr": n.pod_cidr,
                "ipv6-cidr": n.ipv6_cidr,
                "health": "ok" if time.time() - n.heartbeat < stale_after else "stale",
                "last-heartbeat": n.heartbeat,
            }
            for n in sorted(m.nodes().values(), key=lambda n: n.name)
        ]

    @r.get("/v1/kvstore")
    def kv_get(key: str, recursive: bool = False) -> list[dict[str, Any]]:
        try:
            kvs = member().kv_get(key, recursive)
        except KvstoreUnavailable as exc:
            raise AgentError(str(exc), 503) from None
        return [
            {"key": kv.key, "value": kv.value.decode(errors="replace"), "lease": kv.lease}
            for kv in kvs
        ]

    @r.put("/v1/kvstore")
    def kv_set(req: KvSetRequest) -> dict[str, Any]:
        try:
            member().kv_set(req.key, req.value)
        except KvstoreUnavailable as exc:
            raise AgentError(str(exc), 503) from None
        return {"key": req.key}

    @r.delete("/v1/kvstore")
    def kv_delete(key: str) -> dict[str, Any]:
        try:
            return {"deleted": member().kv_delete(key)}
        except KvstoreUnavailable as exc:
            raise AgentError(str(exc), 503) from None

    @r.get("/v1/bpf/tunnel")
    def bpf_tunnel() -> list[dict[str, Any]]:
        with agent.lock:
            entries = agent.datapath.tunnel_entries()
        return [{"prefix": p, "node-ip": ip} for p, ip in sorted(entries.items())]

    def _family_order(prefix: str) -> tuple[int, IPv4Network | IPv6Network]:
        net = ip_network(prefix)
        return net.version, net

    @r.get("/v1/bpf/ipcache")
    def bpf_ipcache() -> list[dict[str, Any]]:
        with agent.lock:
            entries = agent.datapath.ipcache_entries()
        return [
            {
                "prefix": p,
                "identity": e.identity,
                "flags": e.flags,
                "tunnel-endpoint": e.tunnel_endpoint,
            }
            for p, e in sorted(entries.items(), key=lambda item: _family_order(item[0]))
        ]

    return r
