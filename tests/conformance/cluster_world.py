"""The conformance world spread over the nodes of a cluster.

Pods a, b and c of every namespace are pinned (`spec.nodeName`) to the first,
second and third node, so every pair of nodes has pods talking both ways. Each
node is a site: its network namespace is the `host` of its pods, and an outside
hangs off it (every outside has the same addresses: each node is its own routing
domain). Objects go through the first node's CLI to etcd; since `apply` returns
once that node applied them, `settle()` waits for the other nodes. The cluster
itself is shared: only the world's pods, namespaces and outsides are removed.
"""

from __future__ import annotations

import json
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from cilia.cli.client import Client
from cilia.datapath.external import Outside
from cilia.datapath.netns import netns_path
from tests.cluster.harness import ClusterHandle
from tests.conformance.world import NAMESPACES, POD_REFS, PODS, Site, World, outside_addresses

SETTLE_TIMEOUT = 30.0
SETTLE_POLL = 0.1
OBJECT_KINDS = ("namespaces", "pods", "policies", "services")


class NotSettled(Exception):
    """The nodes' views differ (the message says where)."""


class ClusterWorld(World):
    """The 9 pods round robin on the cluster's nodes, one outside per node."""

    pins_pods: ClassVar[bool] = True

    def __init__(self, cluster: ClusterHandle, tmp: Path, tag: str) -> None:
        nodes = cluster.nodes
        sites = {
            node: Site(
                host_netns=netns_path(cluster.node(node).netns),
                outside=Outside(
                    netns=f"cilia-cw{tag}-{node}-outside",
                    host_ifname=f"co{tag}",
                    router_netns=cluster.node(node).netns,
                    **outside_addresses(tag),
                ),
                log=tmp / f"outside-{node}.log",
            )
            for node in nodes
        }
        placement = {ref: nodes[PODS.index(ref.split("/")[1]) % len(nodes)] for ref in POD_REFS}
        super().__init__(sites, placement)
        self.cluster = cluster
        self._agents = {node: cluster.client(node) for node in nodes}

    @property
    def agents(self) -> dict[str, Client]:
        return self._agents

    @property
    def home_node(self) -> str:
        return next(iter(self._agents))

    def _cli(self, verb: str, manifest: str) -> None:
        res = self.cluster.run(self.home_node, verb, "-f", "-", input=textwrap.dedent(manifest))
        if res.code != 0:
            raise AssertionError(
                f"cilia {verb} on {self.home_node} exited {res.code}: {res.stderr}"
            )

    def apply(self, manifest: str) -> None:
        self._cli("apply", manifest)

    def delete(self, manifest: str) -> None:
        self._cli("delete", manifest)

    def start(self) -> None:
        left = self._world_objects()
        assert not left, f"the shared cluster already holds objects of {NAMESPACES}: {left}"

    def stop(self) -> list[str]:
        """Delete the world's objects and wait until no node runs or lists its pods."""
        self.remove_objects(("policies", "services", "pods", "namespaces"))
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while (left := self._world_objects()) and time.monotonic() < deadline:
            time.sleep(SETTLE_POLL)
        left += [f"pod netns {p}" for p in self.netns.values() if Path(p).exists()]
        return left

    def _world_objects(self) -> list[str]:
        """Objects of the world's namespaces that any node still lists."""
        return [
            f"{node}: {kind} {item['object']['metadata']['name']}"
            for node, client in self._agents.items()
            for kind in OBJECT_KINDS
            for item in client.request("GET", f"/objects/{kind}")
            if _namespace(item) in NAMESPACES
        ]

    def settle(self) -> None:
        """Wait until every node holds the same objects of the world's namespaces and sees
        every pod ready with the identity its own node gave it, knows that identity and
        has both its addresses in its ipcache (behind the pod's node's tunnel endpoint
        when remote); the
        same picture twice in a row, so that a regeneration a watch event asked for has
        run too."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        last: object = None
        why = "the nodes' views kept changing"
        while True:
            try:
                picture: object = self._picture()
            except NotSettled as exc:
                picture, why = None, str(exc)
            if picture is not None and picture == last:
                return
            last = picture
            if time.monotonic() > deadline:
                raise AssertionError(f"the nodes did not converge in {SETTLE_TIMEOUT:g}s: {why}")
            time.sleep(SETTLE_POLL)

    def _picture(self) -> tuple[Any, ...]:
        """Objects and pod identities all nodes agree on; NotSettled if they do not."""
        with ThreadPoolExecutor(len(self._agents)) as pool:
            views = dict(zip(self._agents, pool.map(_View, self._agents.values()), strict=True))
        first, *others = self._agents
        for node in others:
            if views[node].objects != views[first].objects:
                raise NotSettled(f"{node} holds other objects than {first}")
        pods: list[tuple[str, str, int]] = []
        for ref in POD_REFS:
            owner = self.placement[ref]
            own = views[owner].pods.get(ref, {})
            if own.get("state") != "ready" or not own.get("identity"):
                raise NotSettled(f"{ref} is not ready on {owner}: {own}")
            ip, ip6, identity = own["ipv4"], own.get("ipv6"), own["identity"]
            for node, view in views.items():
                seen = view.pods.get(ref, {})
                if (seen.get("ipv4"), seen.get("ipv6"), seen.get("identity")) != (
                    ip,
                    ip6,
                    identity,
                ):
                    raise NotSettled(f"{node} sees {ref} as {seen}, its node as {own}")
                if identity not in view.identities:
                    raise NotSettled(f"{node} does not know identity {identity} of {ref}")
                tunnel = "" if node == owner else self.cluster.node(owner).underlay_ip
                for prefix in (f"{ip}/32", f"{ip6}/128"):
                    entry = view.ipcache.get(prefix)
                    if entry != (identity, tunnel):
                        raise NotSettled(
                            f"{node}'s ipcache maps {ref} ({prefix}) to {entry}, "
                            f"not {(identity, tunnel)}"
                        )
            pods.append((ref, ip, identity))
        return views[first].objects, tuple(pods)


class _View:
    """What one node shows of the world: objects, pod rows, identities, ipcache."""

    def __init__(self, client: Client) -> None:
        listed = {
            kind: [
                i for i in client.request("GET", f"/objects/{kind}") if _namespace(i) in NAMESPACES
            ]
            for kind in OBJECT_KINDS
        }
        self.objects = tuple(sorted(_canonical(i) for items in listed.values() for i in items))
        self.pods = {f"{row['namespace']}/{row['name']}": row for row in listed["pods"]}
        self.identities = {i["id"] for i in client.request("GET", "/identity")}
        self.ipcache = {
            e["prefix"]: (e["identity"], e["tunnel-endpoint"] or "")
            for e in client.request("GET", "/bpf/ipcache")
        }


def _namespace(item: dict[str, Any]) -> str:
    meta = item["object"]["metadata"]
    return str(meta.get("namespace", meta["name"]))


def _canonical(item: dict[str, Any]) -> str:
    """An object as stored (without the node's status), with a Service's backends."""
    obj = {k: v for k, v in item["object"].items() if k != "status"}
    return json.dumps([obj, item.get("backends")], sort_keys=True)
