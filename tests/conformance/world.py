"""The shared world of the conformance suite: one agent, 9 pods, an outside, the host.

Namespaces x, y, z (labelled `ns: <name>`), pods a, b, c in each (labelled
`pod: <name>`) serving TCP and UDP on 80 and 81, and an external namespace
("outside", routed through the host, standing for the internet) serving the same.
Policies may name the outside as `OUTSIDE_IP` (its address) and `OUTSIDE_NET` (its
/30). Everything is created once per module and removed at the end.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cilia.datapath.external import Outside
from cilia.runtime.probe import probe
from cilia.runtime.processes import ProcessRecord, start_process, stop_process, wait_listening
from tests.conformance.expect import Key
from tests.integration.harness import Cilia

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
PORTS = (80, 81)
PROTOCOLS = ("TCP", "UDP")
HOST_NETNS = "/proc/self/ns/net"
RESPONDER = ["-m", "cilia.runtime.responder", "--pod", "outside"]


def namespace_doc(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Namespace manifest (default labels `ns: <name>`)."""
    meta = {"name": name, "labels": labels if labels is not None else {"ns": name}}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def pod_doc(ref: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Pod manifest for `ns/name` (default labels `pod: <name>`)."""
    ns, name = ref.split("/")
    ports = [{"containerPort": p, "protocol": proto} for p in PORTS for proto in PROTOCOLS]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"pod": name}},
        "spec": {"containers": [{"name": "srv", "ports": ports}]},
    }


def dump_all(docs: list[dict[str, Any]]) -> str:
    """Multi-document YAML."""
    return yaml.safe_dump_all(docs, sort_keys=False)


BASE = dump_all(
    [namespace_doc(ns) for ns in NAMESPACES]
    + [pod_doc(f"{ns}/{p}") for ns in NAMESPACES for p in PODS]
)
POD_REFS = [f"{ns}/{p}" for ns in NAMESPACES for p in PODS]


@dataclass
class World:
    """The running agent, its pods' addresses and the outside."""

    cilia: Cilia
    outside: Outside
    responder: ProcessRecord | None = None

    def setup(self, python: str) -> None:
        """Start the agent, create the 9 pods and the outside with its responder."""
        self.cilia.start()
        self.cilia.apply(BASE)
        self.outside.create()
        argv = [python, *RESPONDER]
        for port in PORTS:
            argv += ["--tcp", str(port), "--udp", str(port)]
        log = Path(self.cilia.tmp) / "outside.log"
        self.responder = start_process(self.outside.path, argv, log)
        if not wait_listening(self.outside.path, tcp=PORTS, udp=PORTS, timeout=10):
            raise RuntimeError("the outside's responder did not start")
        self.ips = {
            ref: self.cilia.client.request("GET", f"/endpoint/{ref}")["ipv4"] for ref in POD_REFS
        }
        self.netns = {
            ref: self.cilia.client.request("GET", f"/pods/{ref}/netns")["netns"] for ref in POD_REFS
        }

    def teardown(self) -> list[str]:
        """Stop everything; returns what was left behind."""
        if self.responder is not None:
            stop_process(self.responder)
        self.outside.remove()
        return self.cilia.stop()

    def substitute(self, text: str) -> str:
        """Fill in the outside's address (`OUTSIDE_IP`) and its /30 (`OUTSIDE_NET`)."""
        net = self.outside.outside_ip.rsplit(".", 1)[0] + ".0/30"
        return text.replace("OUTSIDE_IP", self.outside.outside_ip).replace("OUTSIDE_NET", net)

    def pod_matrix(self, timeout: float) -> dict[Key, bool]:
        """Probes between every ordered pair of distinct pods (the agent's matrix API)."""
        body = {"ports": list(PORTS), "protocols": list(PROTOCOLS), "timeout": timeout}
        res = self.cilia.client.request("POST", "/probe/matrix", json=body)
        return {
            (r["from"], r["to"], r["port"], r["protocol"]): r["result"] == "allowed"
            for r in res["results"]
            if r["from"] != r["to"]
        }

    def edge_matrix(self, peers: list[str], timeout: float) -> dict[Key, bool]:
        """Probes between the pods and `outside` (both ways) and from `host`."""
        jobs: list[tuple[Key, str, str]] = []
        for peer, ref, port, proto in itertools.product(peers, POD_REFS, PORTS, PROTOCOLS):
            if peer == "outside":
                jobs.append(((ref, peer, port, proto), self.netns[ref], self.outside.outside_ip))
                jobs.append(((peer, ref, port, proto), self.outside.path, self.ips[ref]))
            else:
                jobs.append(((peer, ref, port, proto), HOST_NETNS, self.ips[ref]))

        async def run() -> list[bool]:
            results = await asyncio.gather(
                *(probe(src, dst, k[2], k[3], timeout) for k, src, dst in jobs)
            )
            return [r.result == "allowed" for r in results]

        return dict(zip([j[0] for j in jobs], asyncio.run(run()), strict=True))

    def reprobe(self, key: Key, timeout: float) -> bool:
        """One probe again, with a longer timeout (to rule out a slow allowed probe)."""
        src, dst, port, proto = key
        src_path = {"outside": self.outside.path, "host": HOST_NETNS}.get(src) or self.netns[src]
        dst_ip = self.outside.outside_ip if dst == "outside" else self.ips[dst]
        return asyncio.run(probe(src_path, dst_ip, port, proto, timeout)).result == "allowed"

    def trace_verdicts(self, keys: list[Key]) -> dict[Key, bool]:
        """`policy trace` verdicts of pod pairs (one batch request)."""
        reqs = [
            {"src_pod": s.replace("/", ":"), "dst_pod": d.replace("/", ":"), "dport": f"{p}/{pr}"}
            for s, d, p, pr in keys
        ]
        res = self.cilia.client.request("POST", "/policy/resolve/batch", json=reqs)
        return {k: r["verdict"] == "ALLOWED" for k, r in zip(keys, res, strict=True)}
