"""Cluster: policy change to enforced on every node (3 nodes, 100 pods spread over them).

A CiliumNetworkPolicy selecting all 100 pods is applied and deleted again through
node1's API (`POST /v1/objects/apply|delete`, what `cilia apply|delete` send: a
transaction in etcd, returning once node1 enforces it). Each change is timed from the
API call until the LAST node reports it enforced (its realized policy revision moves
past the one before the change; three threads poll `GET /v1/status` on the nodes).
Baseline, same run and alternated with the changes: applying an unchanged object (the
same API call, one etcd read, nothing to enforce).

Usage: python -m benchmarks.bench_cluster_policy [--quick]   (root)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import log, median, p95, save, timed, verdict
from tests.cluster.harness import ClusterHandle, running_cluster

from cilia.cli.client import Client

NS = "bcp"
PODS = 100
TARGET_S = 0.150
POLL_S = 0.003


def manifests(nodes: list[str]) -> str:
    docs = [f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"]
    for i in range(PODS):
        docs.append(
            f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i:03d}, namespace: {NS}, "
            f"labels: {{app: bcp, group: g{i % 10}}}}}\n"
            f"spec:\n  nodeName: {nodes[i % len(nodes)]}\n  containers:\n  - name: idle\n"
        )
    return "---\n".join(docs)


POLICY = f"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: bcp, namespace: {NS}}}
spec:
  endpointSelector: {{matchLabels: {{app: bcp}}}}
  ingress:
  - fromEndpoints: [{{matchExpressions: [{{key: group, operator: In, values: [g0, g1, g2]}}]}}]
    toPorts: [{{ports: [{{port: "80", protocol: TCP}}]}}]
"""
UNCHANGED = f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"


def realized(client: Client) -> int:
    return int(client.get("/status")["realized-revision"])


def time_to_all(clients: list[Client], call: Client, path: str, text: str) -> float:
    """Seconds from the API call on `call` until every node enforces the change."""
    before = [realized(c) for c in clients]
    done: list[float] = [0.0] * len(clients)
    start = time.perf_counter()

    def wait(i: int) -> None:
        while realized(clients[i]) <= before[i]:
            time.sleep(POLL_S)
        done[i] = time.perf_counter()

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(len(clients))]
    call.request("POST", path, json={"text": text, "source": "bench"})
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    if not all(done):
        raise AssertionError("a node did not enforce the change within 30 s")
    return max(done) - start


def run(cluster: ClusterHandle, changes: int) -> dict[str, list[float]]:
    clients = [cluster.client(n) for n in cluster.nodes]
    first = clients[0]
    first.request("POST", "/objects/apply", json={"text": manifests(cluster.nodes), "source": "b"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = first.get("/objects/pods")
        if sum(1 for r in rows if r.get("state") == "ready") == PODS:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the 100 pods did not all become ready")
    log(f"{PODS} pods ready on {len(clients)} nodes")
    samples: dict[str, list[float]] = {"change": [], "unchanged apply": []}
    for k in range(changes):
        noop = lambda: first.request(  # noqa: E731
            "POST", "/objects/apply", json={"text": UNCHANGED, "source": "b"}
        )
        samples["unchanged apply"].append(timed(noop)[0])
        samples["change"].append(time_to_all(clients, first, "/objects/apply", POLICY))
        samples["unchanged apply"].append(timed(noop)[0])
        samples["change"].append(time_to_all(clients, first, "/objects/delete", POLICY))
        if (k + 1) % 5 == 0:
            log(f"{k + 1} apply/delete cycles")
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer changes")
    args = ap.parse_args()
    changes = 5 if args.quick else 20
    env_dir = Path(tempfile.mkdtemp(prefix="cilia-bench-cluster-"))
    os.environ["CILIA_SYNC_INTERVAL"] = "10"
    with running_cluster(env_dir / "c", "--nodes=3") as cluster:
        samples = run(cluster, changes)
    change, base = samples["change"], samples["unchanged apply"]
    ok = median(change) < TARGET_S
    print(f"\n== Cluster: policy change to enforced on all 3 nodes ({PODS} pods) ==")
    print(f"  baseline apply of an unchanged object  median {median(base) * 1e3:6.1f} ms")
    print(
        f"  change to enforced on the last node    median {median(change) * 1e3:6.1f} ms  "
        f"p95 {p95(change) * 1e3:6.1f} ms  n={len(change)}  "
        f"({median(change) / median(base):.1f}x baseline)"
    )
    print(
        f"  [8c] median {median(change) * 1e3:.0f} ms (target < {TARGET_S * 1e3:.0f} ms): "
        f"{verdict(ok)}"
    )
    save("cluster-policy", {"kernel": os.uname().release, **samples})
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
