"""What the cluster datapath and fault tests run: one namespace of pods and policies per
test (unique name, deleted at the end), probes and HTTP from inside pods, the nodes'
counters and metrics, and `cilia monitor` captures.

`Workload.apply` returns once every node has the objects and every node's ipcache maps
each pod to its identity (through its node's tunnel when remote), so a test's verdicts
never race the store's watches.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from cilia.cli.client import ApiError
from cilia.datapath.netns import netns_path, socket_in_netns
from cilia.runtime.probe import probe
from tests.cluster.harness import ClusterHandle
from tests.integration.harness import CommandResult

T = TypeVar("T")
Doc = dict[str, Any]
Counters = dict[tuple[int, str], int]

WAIT = 20.0
"""Seconds every node gets to converge on a change."""
MARKER = "cilia-test/applied"
"""Annotation stamped on every object of an apply, to see when a node has that version."""
LISTING = {
    "Namespace": "namespaces",
    "Pod": "pods",
    "CiliumNetworkPolicy": "policies",
    "Service": "services",
}
QUIET_REASONS = (0, 139)
"""Forwarded packets, and the pods' IPv6 chatter (unsupported L3): not verdicts."""


def eventually(check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll `check` until it returns a true value (ApiError and AssertionError count
    as not yet); AssertionError naming `what` and the last outcome after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result: T | None = check()
            last: object = result
        except (ApiError, AssertionError) as exc:
            result, last = None, exc
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:g}s (last: {last!r})")
        time.sleep(0.1)


@dataclass(frozen=True)
class PodInfo:
    """A pod as the cluster reports it."""

    name: str
    node: str
    ip: str
    identity: int
    ipv6: str = ""
    """"" unless the cluster runs dual stack."""


def _key(doc: Doc) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


class Workload:
    """Pods and policies of one test, in a namespace named `<prefix>-<random>`."""

    def __init__(self, cluster: ClusterHandle, prefix: str) -> None:
        self.cluster = cluster
        self.namespace = f"{prefix}-{secrets.token_hex(3)}"
        self.applied: dict[tuple[str, str, str], Doc] = {}

    # -- manifests -------------------------------------------------------

    def namespace_doc(self) -> Doc:
        ns = self.namespace
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}

    def pod(
        self,
        name: str,
        node: str,
        labels: dict[str, str],
        ports: tuple[int, ...] = (80, 81),
    ) -> Doc:
        """A pod pinned to `node` with the built-in responder on `ports`."""
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "main", "ports": [{"containerPort": p} for p in ports]}],
            },
        }

    def policy(self, name: str, spec: Doc) -> Doc:
        """A CiliumNetworkPolicy of the namespace."""
        return {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }

    # -- applying and deleting -------------------------------------------

    @staticmethod
    def text(docs: list[Doc]) -> str:
        """A multi-document manifest (JSON documents are YAML)."""
        return "\n---\n".join(json.dumps(d) for d in docs) + "\n"

    def stamped(self, *docs: Doc) -> list[Doc]:
        """Copies of `docs` carrying one fresh marker annotation."""
        marker = secrets.token_hex(4)
        out = []
        for doc in docs:
            meta = dict(doc["metadata"])
            meta["annotations"] = {**meta.get("annotations", {}), MARKER: marker}
            out.append({**doc, "metadata": meta})
        return out

    def try_apply(self, docs: list[Doc], node: str | None = None) -> CommandResult:
        """`cilia apply -f -` on `node` (None: the default node), whatever it answers;
        the objects are remembered for the final delete."""
        for doc in docs:
            self.applied[_key(doc)] = doc
        return self.cluster.run(node, "apply", "-f", "-", input=self.text(docs))

    def apply(self, *docs: Doc, node: str | None = None) -> None:
        """Apply, then wait until every node has these versions and, for pods, until every
        node's ipcache maps them (`node`: where the command runs)."""
        stamped = self.stamped(*docs)
        res = self.try_apply(stamped, node)
        assert res.code == 0, f"apply exited {res.code}: {res.stderr}"
        self.wait_applied(stamped)

    def wait_applied(self, docs: list[Doc]) -> None:
        """Every node lists every doc (its marker), enforces every policy, and maps every
        pod in its ipcache."""
        for node in self.cluster.nodes:
            eventually(partial(self._has, node, docs), f"{node} has the objects")
        pods = [self.info(d["metadata"]["name"]) for d in docs if d["kind"] == "Pod"]
        for node in self.cluster.nodes:
            eventually(partial(self._maps, node, pods), f"{node} maps the pods")

    def _has(self, node: str, docs: list[Doc]) -> bool:
        client = self.cluster.client(node)
        for doc in docs:
            kind, ns, name = _key(doc)
            items = client.get(f"/objects/{LISTING[kind]}")
            found = [
                i["object"] for i in items if (i.get("namespace", ""), i["name"]) == (ns, name)
            ]
            if not found or found[0]["metadata"]["annotations"] != doc["metadata"]["annotations"]:
                return False
            if kind == "CiliumNetworkPolicy" and not found[0]["status"]["nodes"][node]["enforcing"]:
                return False
        return True

    def _maps(self, node: str, pods: list[PodInfo]) -> bool:
        entries = {e["prefix"]: e for e in self.cluster.client(node).get("/bpf/ipcache")}
        for pod in pods:
            entry = entries.get(f"{pod.ip}/32")
            endpoint = "" if pod.node == node else self.cluster.node(pod.node).underlay_ip
            if entry is None or (entry["identity"], entry["tunnel-endpoint"]) != (
                pod.identity,
                endpoint,
            ):
                return False
        return True

    def try_delete(self, docs: list[Doc], node: str | None = None) -> CommandResult:
        """`cilia delete -f -` on `node`, whatever it answers."""
        for doc in docs:
            self.applied.pop(_key(doc), None)
        return self.cluster.run(node, "delete", "-f", "-", input=self.text(docs))

    def delete(self, *docs: Doc, node: str | None = None) -> None:
        """Delete, then wait until no node lists them any more."""
        res = self.try_delete(list(docs), node)
        assert res.code == 0, f"delete exited {res.code}: {res.stderr}"
        self.wait_deleted(list(docs))

    def wait_deleted(self, docs: list[Doc]) -> None:
        """No node lists any of `docs`."""
        keys = {_key(d) for d in docs}

        def forgot(node: str) -> bool:
            return not self._listed(node) & keys

        for node in self.cluster.nodes:
            eventually(partial(forgot, node), f"{node} forgot the objects")

    def _listed(self, node: str) -> set[tuple[str, str, str]]:
        """Keys of this test's objects that a node lists."""
        client = self.cluster.client(node)
        out = set()
        for kind, listing in LISTING.items():
            for item in client.get(f"/objects/{listing}"):
                key = (kind, item.get("namespace", ""), item["name"])
                if self.namespace in (key[1], key[2] if kind == "Namespace" else None):
                    out.add(key)
        return out

    def _nothing_listed(self, node: str) -> bool:
        return not self._listed(node)

    def delete_all(self) -> None:
        """Delete everything applied; check that no node keeps a pod, policy or pod
        namespace of it."""
        if self.applied:
            self.delete(*self.applied.values())
        for node in self.cluster.nodes:
            eventually(partial(self._nothing_listed, node), f"{node} has nothing of the test")
        pattern = f"{self.cluster.prefix}-*_{self.namespace}_*"
        eventually(lambda: not list(Path("/run/netns").glob(pattern)), "pod namespaces removed")

    # -- pods ------------------------------------------------------------

    def info(self, name: str) -> PodInfo:
        """The pod's node, address and identity, once its node reports it ready."""

        def ready() -> PodInfo | None:
            for item in self.cluster.client(self.cluster.nodes[0]).get("/objects/pods"):
                mine = (item["namespace"], item["name"]) == (self.namespace, name)
                if mine and item.get("state") == "ready" and item.get("ipv4"):
                    return PodInfo(
                        name,
                        item["node"],
                        item["ipv4"],
                        int(item["identity"]),
                        item.get("ipv6") or "",
                    )
            return None

        return eventually(ready, f"pod {self.namespace}/{name} ready")

    def ref(self, name: str) -> str:
        return f"{self.namespace}/{name}"

    def netns(self, name: str) -> str:
        """Path of a pod's network namespace (asked to its node)."""
        node = self.info(name).node
        path = self.cluster.client(node).get(f"/pods/{self.namespace}/{name}/netns")["netns"]
        return str(path)

    def probe(self, src: str, dst: str, port: int = 80, proto: str = "TCP") -> bool:
        """Does pod `src` reach pod `dst` (probed by the source's node)?"""
        res = self.cluster.client(self.info(src).node).request(
            "POST",
            "/probe",
            json={
                "source": self.ref(src),
                "destination": self.ref(dst),
                "port": port,
                "protocol": proto,
                "timeout": 1.0,
            },
        )
        return bool(res["result"] == "allowed")

    def get(self, src: str, dst: str, path: str, port: int = 80) -> int:
        """HTTP status of `GET path` from pod `src` to pod `dst` (0: no answer)."""
        return http_status(self.netns(src), self.info(dst).ip, path, port)


@contextmanager
def workload(cluster: ClusterHandle, prefix: str) -> Iterator[Workload]:
    """A Workload whose objects are all deleted at the end, pass or fail."""
    w = Workload(cluster, prefix)
    try:
        yield w
    finally:
        w.delete_all()


# -- traffic --------------------------------------------------------------------


class PodConnection(http.client.HTTPConnection):
    """HTTP over TCP from inside a network namespace; counts the connections it made."""

    def __init__(self, netns: str, host: str, port: int = 80, timeout: float = 2.0) -> None:
        super().__init__(host, port, timeout=timeout)
        self.netns = netns
        self.connects = 0

    def connect(self) -> None:
        sock = socket_in_netns(self.netns, socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = sock
        self.connects += 1

    def fetch(self, method: str, path: str, body: bytes | None = None) -> int:
        """One request on the connection; its status."""
        self.request(method, path, body=body)
        resp = self.getresponse()
        resp.read()
        return resp.status


def http_status(netns: str, ip: str, path: str, port: int = 80) -> int:
    """Status of one GET from a namespace; 0 when nothing answered in time."""
    conn = PodConnection(netns, ip, port)
    try:
        return conn.fetch("GET", path)
    except OSError:
        return 0
    finally:
        conn.close()


def reaches(netns: str, ip: str, port: int = 80) -> bool:
    """Does a TCP probe from the namespace at `netns` get an HTTP answer?"""
    return asyncio.run(probe(netns, ip, port, "TCP", 1.0)).result == "allowed"


def node_netns(cluster: ClusterHandle, node: str) -> str:
    """Path of a node's own network namespace (its processes)."""
    return netns_path(cluster.node(node).netns)


class Flow:
    """A request every 10 ms on one kept-alive connection from a namespace, in a thread:
    every outcome is recorded (a failure says why), as are the connections made."""

    def __init__(self, netns: str, ip: str, port: int = 80) -> None:
        self.conn = PodConnection(netns, ip, port)
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flow:
        assert self.conn.fetch("GET", "/flow") == 200
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status = self.conn.fetch("GET", "/flow")
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{time.time():.2f}: status {status}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{time.time():.2f}: {exc!r}")
                self.conn.close()
            self._stop.wait(max(0.0, 0.01 - (time.monotonic() - started)))

    def check(self, least: int) -> None:
        """No failure, one connection, at least `least` answered requests."""
        assert self.failures == [], f"{len(self.failures)} failed of {self.ok}: {self.failures[:5]}"
        assert self.conn.connects == 1, "the flow stayed on its first connection"
        assert self.ok >= least, f"only {self.ok} requests answered"


# -- what nodes count and report ------------------------------------------------


def counters(cluster: ClusterHandle, node: str) -> Counters:
    """(reason code, direction) -> packets of a node's datapath (`cilia bpf metrics list`)."""
    rows = cluster.client(node).get("/bpf/metrics")
    return {(r["reason_code"], r["direction"]): r["packets"] for r in rows}


def grew(before: Counters, after: Counters) -> set[tuple[int, str]]:
    """Drop counters that moved (forwarded packets and IPv6 chatter left out)."""
    return {k for k, v in after.items() if k[0] not in QUIET_REASONS and v > before.get(k, 0)}


def metric(cluster: ClusterHandle, node: str, name: str, **labels: str) -> float:
    """Sum of a node's metric samples named `name` with these labels."""
    return sum(
        float(r["value"])
        for r in cluster.client(node).get("/metrics")
        if r["name"] == name and all(r["labels"].get(k) == v for k, v in labels.items())
    )


class Monitor:
    """`cilia monitor -o json` against a node while a block runs; its events are read
    as they come (`events`, `of`), and `settle` waits for those a test expects."""

    def __init__(self, cluster: ClusterHandle, node: str, *types: str) -> None:
        argv = [sys.executable, "-m", "cilia.cli.main", "monitor", "-o", "json"]
        self._argv = argv + [a for t in types for a in ("-t", t)]
        self._env = cluster.env(node)
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> Monitor:
        self._proc = subprocess.Popen(
            self._argv,
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stderr is not None
        line = self._proc.stderr.readline()
        if "Listening for events" not in line:
            self._proc.kill()
            self._proc.wait()
            raise AssertionError(f"cilia monitor did not start: {line}")
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                self.events.append(json.loads(line))

    def settle(self, done: Callable[[Monitor], bool], timeout: float = 5.0) -> None:
        """Wait (at most `timeout`) until `done(self)`, then a little more for stragglers."""
        deadline = time.monotonic() + timeout
        while not done(self) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)

    def __exit__(self, *_: object) -> None:
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=10)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("type") == kind]


@contextmanager
def own_drops(
    cluster: ClusterHandle, monitors: Mapping[str, Monitor], sources: set[str]
) -> Iterator[dict[str, set[tuple[int, str]]]]:
    """Which drop counters of the monitored nodes moved during the block (filled in at
    its end), leaving out the drops their monitors report of packets not sent from
    `sources`: on the shared cluster, an earlier test's flow to a pod address that is
    now reused (say a proxy's FIN retransmissions) may be dropped at any time."""
    marks = {n: len(m.events) for n, m in monitors.items()}
    before = {n: counters(cluster, n) for n in monitors}
    moved: dict[str, set[tuple[int, str]]] = {}
    yield moved
    after = {n: counters(cluster, n) for n in monitors}
    time.sleep(0.3)  # the events of those drops reach the monitors
    for node, mon in monitors.items():
        foreign = {
            (e["reason"], e["direction"])
            for e in mon.events[marks[node] :]
            if e.get("type") == "drop" and e.get("src-ip") not in sources
        }
        moved[node] = grew(before[node], after[node]) - foreign
