"""Pods with built-in responders on one node: memory and apply time per pod.

Every pod (`brs/p000`...) has one container with ports 80/TCP and 53/UDP and no
command, so the node's responder host serves it. Measured in the same run:

- apply time per pod for N pods (`cilia apply` of 250 at a time), against one pod applied alone
  (median of 5 apply/delete rounds, before the others exist);
- resident memory of everything the agent runs (agent, responder host, any other
  process carrying its prefix) with N pods, against the same with no pod (the host
  started, serving nothing); and, as
  the baseline of the design it replaced, the VmRSS of one stand-alone responder
  interpreter (`python -m cilia.runtime.responder`, what each pod cost before);
- that every pod answers HTTP with its own name (a sample of 20) and UDP echo.

Usage: python -m benchmarks.bench_responders [--quick] [--pods N]   (root)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from benchmarks.common import Cilia, agent, log, median, save, timed, verdict
from benchmarks.node import BATCH, namespace_yaml, status_field, wide_pod_range

from cilia.runtime.processes import start_process, stop_process, wait_listening

NS = "brs"
PER_POD_TARGET_MB = 1.0
"""A pod's marginal memory: a few sockets, far below an interpreter (~20 MB)."""


def pod_yaml(name: str) -> str:
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NS}}}\n"
        "spec:\n  containers:\n  - name: web\n    ports:\n    - {containerPort: 80}\n"
        "    - {containerPort: 53, protocol: UDP}\n"
    )


def prefix_rss_mb(cilia: Cilia) -> float:
    """VmRSS (MB) summed over every process carrying the agent's prefix."""
    marker = f"CILIA_NAME_PREFIX={cilia.config.name_prefix}\0".encode()
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes():
                total += status_field(int(pid), "VmRSS")
        except (OSError, KeyError):
            continue
    return total / 1024


def standalone_responder_mb(tmp: Path) -> float:
    """VmRSS (MB) of one responder interpreter on its own (the old per-pod cost)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "cilia.runtime.responder", "--pod", "x", "--tcp", str(port)]
    rec = start_process("/proc/self/ns/net", argv, tmp / "standalone.log")
    try:
        assert wait_listening("/proc/self/ns/net", [port], timeout=10.0)
        return status_field(rec.pid, "VmRSS") / 1024
    finally:
        stop_process(rec)


def answers(cilia: Cilia, name: str) -> bool:
    """HTTP on 80 names the pod, UDP 53 echoes (from the node)."""
    ip = cilia.client.request("GET", f"/endpoint/{NS}/{name}")["ipv4"]
    with socket.create_connection((ip, 80), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    ok = json.loads(data.partition(b"\r\n\r\n")[2])["pod"] == f"{NS}/{name}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(3)
        u.sendto(b"ping", (ip, 53))
        return ok and u.recv(16) == b"ping"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="50 pods")
    args = parser.parse_args()
    n = 50 if args.quick else args.pods
    with agent(wide_pod_range()) as cilia:
        cilia.apply(namespace_yaml(NS))
        single = []
        for _ in range(5):
            seconds, _ = timed(lambda: cilia.apply(pod_yaml("alone")))
            single.append(seconds)
            cilia.delete(pod_yaml("alone"))
        idle_mb = prefix_rss_mb(cilia)  # the responder host runs, serving nothing
        names = [f"p{i:03d}" for i in range(n)]
        log(f"applying {n} responder pods, {BATCH} per apply")
        many_s = 0.0
        for lo in range(0, n, BATCH):
            batch = "---\n".join(pod_yaml(x) for x in names[lo : lo + BATCH])
            many_s += timed(lambda batch=batch: cilia.apply(batch))[0]
        time.sleep(2.0)  # let the controllers settle before reading memory
        loaded_mb = prefix_rss_mb(cilia)
        sample = names[:: max(1, n // 20)]
        served = sum(answers(cilia, x) for x in sample)
        interpreter_mb = standalone_responder_mb(cilia.tmp)
        log("deleting the pods")
        for lo in range(0, n, BATCH):
            cilia.delete("---\n".join(pod_yaml(x) for x in names[lo : lo + BATCH]))
    per_pod_s, alone_s = many_s / n, median(single)
    per_pod_mb = (loaded_mb - idle_mb) / n
    print(f"== built-in responders: {n} pods on one node, same run ==")
    print(f"apply: {per_pod_s * 1000:.1f} ms a pod applying {n}; one pod alone")
    print(f"  {alone_s * 1000:.1f} ms (median of 5); ratio {per_pod_s / alone_s:.2f}")
    print(f"memory: {loaded_mb:.1f} MB for the agent and its processes with {n} pods, ")
    print(f"  {idle_mb:.1f} MB with none: {per_pod_mb * 1024:.0f} kB a pod; one responder")
    print(f"  interpreter alone {interpreter_mb:.1f} MB (the old per-pod cost): ratio")
    print(
        f"  {per_pod_mb / interpreter_mb:.3f}; target < {PER_POD_TARGET_MB:.0f} MB a pod:"
        f" {verdict(per_pod_mb < PER_POD_TARGET_MB)}"
    )
    print(f"served: {served}/{len(sample)} sampled pods answered HTTP and UDP")
    save(
        "responders",
        {
            "pods": n,
            "apply_many_s": many_s,
            "apply_alone_s": single,
            "rss_idle_mb": idle_mb,
            "rss_loaded_mb": loaded_mb,
            "interpreter_mb": interpreter_mb,
            "served": served,
            "sampled": len(sample),
        },
    )
    if served != len(sample):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
