"""The shared world of the conformance suite: 9 pods, an outside and the host as peers.

Namespaces x, y, z (labelled `ns: <name>`), pods a, b, c in each (labelled
`pod: <name>`) serving TCP and UDP on 80 and 81, each with an IPv4 and an IPv6
address: every probe runs in both families. Each pod has a *site*: the
namespace that is its `host` (its node's own processes) and an external
namespace ("outside", routed through that node, standing for the internet)
serving the same ports on both families. Policies may name the outside as
`OUTSIDE_IP` (its address) and `OUTSIDE_NET` (its /30), `OUTSIDE_IP6` and
`OUTSIDE_NET6` (its /126); every site's outside has the same addresses.
`NodeWorld` runs the pods on one agent with the test's own namespace as host; the
cluster world (`cluster_world.py`) spreads them over the nodes of a cluster.
Everything is created once per module and removed at the end.
"""

from __future__ import annotations

import asyncio
import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from cilia.cli.client import Client
from cilia.cli.matrix import Key, ask_all, key_of, merge, missing
from cilia.datapath.external import Outside
from cilia.runtime.probe import probe
from cilia.runtime.processes import ProcessRecord, start_process, stop_process, wait_listening
from tests.integration.harness import Cilia

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
PORTS = (80, 81)
PROTOCOLS = ("TCP", "UDP")
HOST_NETNS = "/proc/self/ns/net"
RESPONDER = ["-m", "cilia.runtime.responder", "--pod", "outside"]
FAMILIES = (4, 6)
POD_REFS = [f"{ns}/{p}" for ns in NAMESPACES for p in PODS]


def namespace_doc(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Namespace manifest (default labels `ns: <name>`)."""
    meta = {"name": name, "labels": labels if labels is not None else {"ns": name}}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def pod_doc(
    ref: str, labels: dict[str, str] | None = None, node: str | None = None
) -> dict[str, Any]:
    """A Pod manifest for `ns/name` (default labels `pod: <name>`), pinned to `node` if
    given."""
    ns, name = ref.split("/")
    ports = [{"containerPort": p, "protocol": proto} for p in PORTS for proto in PROTOCOLS]
    spec: dict[str, Any] = {"containers": [{"name": "srv", "ports": ports}]}
    if node is not None:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"pod": name}},
        "spec": spec,
    }


def outside_addresses(tag: str) -> dict[str, str]:
    """`Outside` addresses of a run (tag: 6 hex digits): host and outside side of
    198.18.N.0/30 (N the tag's first byte) and of an IPv6 /126 under fd0e::/16."""
    n = int(tag[:2], 16)
    return {
        "host_ip": f"198.18.{n}.1",
        "outside_ip": f"198.18.{n}.2",
        "host_ip6": f"fd0e:{tag[:4]}:{tag[4:6]}::1",
        "outside_ip6": f"fd0e:{tag[:4]}:{tag[4:6]}::2",
    }


def dump_all(docs: list[dict[str, Any]]) -> str:
    """Multi-document YAML."""
    return yaml.safe_dump_all(docs, sort_keys=False)


@dataclass
class Site:
    """Where the `host` and `outside` peers of some pods are: their node's own network
    namespace, and an outside attached to that node with a responder in it."""

    host_netns: str
    outside: Outside
    log: Path
    responder: ProcessRecord | None = None

    def start(self, python: str) -> None:
        """Create the outside and start its responder on every port and protocol."""
        self.outside.create()
        argv = [python, *RESPONDER]
        for port in PORTS:
            argv += ["--tcp", str(port), "--udp", str(port)]
        self.responder = start_process(self.outside.path, argv, self.log)
        if not wait_listening(self.outside.path, tcp=PORTS, udp=PORTS, timeout=10):
            raise RuntimeError(f"the responder in {self.outside.netns} did not start")

    def stop(self) -> list[str]:
        """Stop the responder and remove the outside; returns what was left behind."""
        try:
            if self.responder is not None:
                stop_process(self.responder)
        finally:
            self.outside.remove()
        return [f"netns {self.outside.netns}"] if Path(self.outside.path).exists() else []


class World(ABC):
    """The pods' addresses and namespaces, their sites, and the agents running them.

    `placement` maps each pod to the name of the agent (node) that runs it, which is
    also the name of its site. Objects are applied, policies traced and the world
    reset through `home`, the first agent.
    """

    pins_pods: ClassVar[bool] = False
    """Whether the pods carry `spec.nodeName` (their placement)."""

    def __init__(self, sites: dict[str, Site], placement: dict[str, str]) -> None:
        addresses = {
            (o.outside_ip, o.host_ip, o.outside_ip6, o.host_ip6)
            for o in (s.outside for s in sites.values())
        }
        assert len(addresses) == 1, f"the outsides of the sites differ: {addresses}"
        self.sites = sites
        self.placement = placement
        self.ips: dict[str, dict[int, str]] = {}
        """Each pod's address by family."""
        self.netns: dict[str, str] = {}

    @property
    @abstractmethod
    def agents(self) -> dict[str, Client]:
        """API client of every agent that runs pods of the world, by node."""

    @abstractmethod
    def apply(self, manifest: str) -> None:
        """`cilia apply -f -` through the home agent."""

    @abstractmethod
    def delete(self, manifest: str) -> None:
        """`cilia delete -f -` through the home agent."""

    @abstractmethod
    def start(self) -> None:
        """Make the agents ready for the world's pods."""

    @abstractmethod
    def stop(self) -> list[str]:
        """Remove the world's pods (and agents the world started); returns leftovers."""

    @abstractmethod
    def settle(self) -> None:
        """Wait until every agent enforces what was applied."""

    @property
    def home(self) -> Client:
        return next(iter(self.agents.values()))

    @property
    def outside(self) -> Outside:
        """One site's outside (all have the same addresses)."""
        return next(iter(self.sites.values())).outside

    def pod_doc(self, ref: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        """The Pod manifest of a world pod, with its placement when pods are pinned."""
        return pod_doc(ref, labels, self.placement[ref] if self.pins_pods else None)

    @property
    def base(self) -> str:
        """The namespaces and pods with their default labels."""
        return dump_all(
            [namespace_doc(ns) for ns in NAMESPACES] + [self.pod_doc(ref) for ref in POD_REFS]
        )

    def setup(self, python: str) -> None:
        """Start the agents, create the 9 pods and each site's outside with its responder."""
        self.start()
        self.apply(self.base)
        self.settle()
        for site in self.sites.values():
            site.start(python)
        for ref in POD_REFS:
            agent = self.agents[self.placement[ref]]
            endpoint = agent.request("GET", f"/endpoint/{ref}")
            self.ips[ref] = {4: endpoint["ipv4"], 6: endpoint.get("ipv6", "")}
            assert self.ips[ref][6], f"{ref} has no IPv6 address: is the agent dual stack?"
            self.netns[ref] = agent.request("GET", f"/pods/{ref}/netns")["netns"]

    def teardown(self) -> list[str]:
        """Stop everything; returns what was left behind."""
        left: list[str] = []
        try:
            for site in self.sites.values():
                left += site.stop()
        finally:
            left += self.stop()
        return left

    def remove_objects(self, kinds: Sequence[str]) -> None:
        """Delete, through the home agent, every object of these kinds (`policies`,
        `services` with their Endpoints, `pods`, `namespaces`) in the world's namespaces."""
        docs: list[dict[str, Any]] = []
        for kind in kinds:
            for item in self.home.request("GET", f"/objects/{kind}"):
                obj = item["object"]
                meta = obj["metadata"]
                if meta.get("namespace", meta["name"]) not in NAMESPACES:
                    continue
                docs.append(obj)
                if obj["kind"] == "Service":
                    docs.append({"apiVersion": "v1", "kind": "Endpoints", "metadata": meta})
        if docs:
            self.home.request(
                "POST", "/objects/delete", json={"text": dump_all(docs), "source": "reset"}
            )

    def substitute(self, text: str) -> str:
        """Fill in the outside's addresses (`OUTSIDE_IP`, `OUTSIDE_IP6`) and networks
        (`OUTSIDE_NET`, `OUTSIDE_NET6`)."""
        o = self.outside
        for name, value in (  # the IPv6 names first: OUTSIDE_IP is a prefix of OUTSIDE_IP6
            ("OUTSIDE_IP6", o.address(6)),
            ("OUTSIDE_NET6", o.network(6)),
            ("OUTSIDE_IP", o.address(4)),
            ("OUTSIDE_NET", o.network(4)),
        ):
            if name in text:
                assert value, f"the outside has no address for {name}"
                text = text.replace(name, value)
        return text

    def site_of(self, ref: str) -> Site:
        return self.sites[self.placement[ref]]

    def pod_matrix(self, timeout: float) -> dict[Key, bool]:
        """Probes between every ordered pair of distinct pods: each agent probes from its
        own pods to every pod (the matrix API), the answers merged; every pair must be
        covered."""
        body = {
            "ports": list(PORTS),
            "protocols": list(PROTOCOLS),
            "namespaces": list(NAMESPACES),
            "timeout": timeout,
            "family": "both",
        }
        matrix = merge(ask_all(self.agents, body))
        gaps = missing(matrix["results"], POD_REFS, POD_REFS, PORTS, PROTOCOLS, FAMILIES)
        assert not gaps, f"the pod matrix misses {len(gaps)} probes, e.g. {gaps[:5]}"
        return {
            key_of(r): r["result"] == "allowed" for r in matrix["results"] if r["from"] != r["to"]
        }

    def edge_matrix(self, peers: list[str], timeout: float) -> dict[Key, bool]:
        """Probes between the pods and `outside` (both ways) and from `host`, each with
        the peer of the pod's site, in each family the peer has an address of."""
        jobs: list[tuple[Key, str, str]] = []
        for peer, ref, port, proto, family in itertools.product(
            peers, POD_REFS, PORTS, PROTOCOLS, FAMILIES
        ):
            site, pod_ip = self.site_of(ref), self.ips[ref][family]
            if peer == "host":
                jobs.append(((peer, ref, port, proto, family), site.host_netns, pod_ip))
                continue
            outside_ip = site.outside.address(family)
            if outside_ip:
                jobs.append(((ref, peer, port, proto, family), self.netns[ref], outside_ip))
                jobs.append(((peer, ref, port, proto, family), site.outside.path, pod_ip))

        async def run() -> list[bool]:
            results = await asyncio.gather(
                *(probe(src, dst, k[2], k[3], timeout) for k, src, dst in jobs)
            )
            return [r.result == "allowed" for r in results]

        return dict(zip([j[0] for j in jobs], asyncio.run(run()), strict=True))

    def reprobe(self, key: Key, timeout: float) -> bool:
        """One probe again, with a longer timeout (to rule out a slow allowed probe)."""
        src, dst, port, proto, family = key
        if src == "outside":
            src_path = self.site_of(dst).outside.path
        elif src == "host":
            src_path = self.site_of(dst).host_netns
        else:
            src_path = self.netns[src]
        if dst == "outside":
            dst_ip = self.site_of(src).outside.address(family)
            assert dst_ip, f"the outside has no IPv{family} address"
        else:
            dst_ip = self.ips[dst][family]
        return asyncio.run(probe(src_path, dst_ip, port, proto, timeout)).result == "allowed"

    def trace_verdicts(self, keys: list[Key]) -> dict[Key, bool]:
        """`policy trace` verdicts of pod pairs (one batch request to the home agent). A
        trace has no family: one per pair, port and protocol, for each family's key."""
        probes = sorted({k[:4] for k in keys})
        reqs = [
            {"src_pod": s.replace("/", ":"), "dst_pod": d.replace("/", ":"), "dport": f"{p}/{pr}"}
            for s, d, p, pr in probes
        ]
        res = self.home.request("POST", "/policy/resolve/batch", json=reqs)
        verdicts = {k: r["verdict"] == "ALLOWED" for k, r in zip(probes, res, strict=True)}
        return {k: verdicts[k[:4]] for k in keys}


LOCAL = "local"
"""The name of the single agent's site in a `NodeWorld`."""


class NodeWorld(World):
    """The world on one agent of its own, with the test's namespace as host and one
    outside routed through it."""

    def __init__(self, cilia: Cilia, outside: Outside) -> None:
        site = Site(HOST_NETNS, outside, Path(cilia.tmp) / "outside.log")
        super().__init__({LOCAL: site}, dict.fromkeys(POD_REFS, LOCAL))
        self.cilia = cilia

    @property
    def agents(self) -> dict[str, Client]:
        return {LOCAL: self.cilia.client}

    def apply(self, manifest: str) -> None:
        self.cilia.apply(manifest)

    def delete(self, manifest: str) -> None:
        self.cilia.delete(manifest)

    def settle(self) -> None:
        """Nothing to wait for: `cilia apply` returns once the agent enforces."""

    def start(self) -> None:
        self.cilia.start()

    def stop(self) -> list[str]:
        return self.cilia.stop()
