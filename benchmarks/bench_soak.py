"""One node, 2,000 cycles of pod create + delete: nothing may leak.

Each cycle applies a few idle pods (no command, no ports: no process) through the API
(`POST /v1/objects/apply`, what `cilia apply` sends) and deletes them again. One
long-lived pod stays throughout, so the policy and its identity stay in use. Before
and after, the run counts: identities, entries of every pinned map (conntrack after a
GC), network devices, network namespaces, files under the agent's state and run
directories, processes below the agent, its threads, its open fds by kind, and its
RSS. Each count is printed before/after; any growth but RSS fails the run (exit 3),
and RSS may grow by at most 10 %. Per-cycle time of the first 10 % of the cycles
against the last 10 % tells whether the agent slows down.

With `--responders` the pods have ports 80/TCP and 53/UDP and no command, so the
node's responder host serves them: its open fds by kind and its RSS are counted too.

Usage: python -m benchmarks.bench_soak [--quick] [--cycles N] [--pods K] [--responders]
(root)
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path

from benchmarks.common import Cilia, agent, log, median, save, verdict
from benchmarks.node import (
    agent_pid,
    apply_all,
    descendants,
    fd_kinds,
    namespace_yaml,
    pod_yaml,
    status_field,
    wide_pod_range,
)
from pyroute2 import IPRoute

from cilia.agent.endpoint import host_ifname
from cilia.datapath import libbpf
from cilia.datapath.proxy_device import proxy_device_name

NS = "bsk"
RSS_SLACK = 1.10
SLOWDOWN_LIMIT = 1.5
POLICY = (
    f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"
    f"metadata: {{name: soak, namespace: {NS}}}\n"
    f"spec:\n  endpointSelector: {{matchLabels: {{app: {NS}}}}}\n  ingress:\n"
    f"  - fromEndpoints: [{{matchLabels: {{group: stay}}}}]\n"
    f'    toPorts: [{{ports: [{{port: "80", protocol: TCP}}]}}]\n'
)


FIXED_SIZE = {"cilia_events", "cilia_events_lost", "cilia_config", "cilia_metrics"}
"""Arrays and the ring buffer: their size never changes."""


def map_entries(maps_dir: Path) -> dict[str, int]:
    """Entries of every pinned map that grows."""
    out = {}
    for pin in sorted(maps_dir.iterdir()):
        if pin.name in FIXED_SIZE:
            continue
        fd = libbpf.obj_get(str(pin))
        try:
            key_size, _ = libbpf.map_entry_sizes(fd)
            cur, nxt, n = None, ctypes.create_string_buffer(key_size), 0
            while libbpf.map_next_key(fd, cur, nxt):
                n += 1
                cur, nxt = nxt, ctypes.create_string_buffer(key_size)
            out[f"map {pin.name}"] = n
        finally:
            os.close(fd)
    return out


def devices(cilia: Cilia, pods: list[str]) -> int:
    """Host devices this run may create: its pods' veths and its proxy device (others'
    runs create devices at the same time, so only these are counted)."""
    prefix = cilia.config.name_prefix
    names = {host_ifname(prefix, NS, p) for p in pods} | {proxy_device_name(prefix)}
    with IPRoute() as ipr:
        return sum(1 for link in ipr.get_links() if link.get_attr("IFLA_IFNAME") in names)


def namespaces(cilia: Cilia) -> int:
    run = Path("/run/netns")
    prefix = cilia.config.name_prefix
    return sum(1 for n in run.iterdir() if n.name.startswith(prefix)) if run.is_dir() else 0


def files_under(*dirs: Path) -> int:
    return sum(len(files) for d in dirs for _, _, files in os.walk(d))


def responder_host(pid: int) -> int | None:
    """The responder host among the agent's children."""
    for child in descendants(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"cilia.runtime.responders" in argv:
            return child
    return None


def counts(cilia: Cilia, pid: int, pods: list[str]) -> dict[str, int]:
    c = cilia.client
    out = {
        "identities": len(c.request("GET", "/identity")),
        "endpoints": len(c.request("GET", "/endpoint")),
        **map_entries(cilia.config.bpf_dir / "maps"),
        "pins": sum(1 for _ in cilia.config.bpf_dir.rglob("*")),
    }
    out["network devices"] = devices(cilia, pods)
    out["network namespaces"] = namespaces(cilia)
    out["files (state + run dirs)"] = files_under(cilia.config.state_dir, cilia.config.run_dir)
    out["processes below the agent"] = len(descendants(pid))
    out["agent threads"] = status_field(pid, "Threads")
    out |= {f"agent fds: {k}": v for k, v in sorted(fd_kinds(pid).items())}
    out["agent RSS (kB)"] = status_field(pid, "VmRSS")
    if (host := responder_host(pid)) is not None:
        out |= {f"responder host fds: {k}": v for k, v in sorted(fd_kinds(host).items())}
        out["responder host RSS (kB)"] = status_field(host, "VmRSS")
    return out


def cycle(cilia: Cilia, i: int, k: int, responders: bool) -> float:
    """Create k pods (their groups rotate, so identities come and go) and delete them."""
    docs = [pod_yaml(NS, f"c{j}", f"g{(i + j) % 3}", responders) for j in range(k)]
    text = "---\n".join(docs)
    start = time.perf_counter()
    cilia.client.request("POST", "/objects/apply", json={"text": text, "source": "soak"})
    cilia.client.request("POST", "/objects/delete", json={"text": text, "source": "soak"})
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 cycles")
    ap.add_argument("--cycles", type=int, help="default 2000 (quick 100)")
    ap.add_argument("--pods", type=int, default=2, help="pods created and deleted per cycle")
    ap.add_argument("--responders", action="store_true", help="pods with built-in responders")
    args = ap.parse_args()
    n = args.cycles or (100 if args.quick else 2000)
    with agent({"CILIA_SYNC_INTERVAL": "10", **wide_pod_range()}) as cilia:
        pid = agent_pid(cilia)
        apply_all(cilia, [namespace_yaml(NS), POLICY, pod_yaml(NS, "stay", "stay")])
        cycle(cilia, 0, args.pods, args.responders)  # warm-up: first-use allocations are not leaks
        pods = ["stay", *(f"c{j}" for j in range(args.pods))]
        before = counts(cilia, pid, pods)
        times = []
        for i in range(n):
            times.append(cycle(cilia, i, args.pods, args.responders))
            if (i + 1) % max(1, n // 20) == 0:
                log(f"{i + 1}/{n} cycles, last {times[-1] * 1e3:.0f} ms")
        time.sleep(1)  # let exited children be reaped
        after = counts(cilia, pid, pods)
    leaks = []
    print(f"\n== Soak: {n} cycles of {args.pods} pods created and deleted ==")
    for key in before:
        b, a = before[key], after.get(key, 0)
        limit = int(b * RSS_SLACK) if "RSS" in key else b
        bad = a > limit
        leaks += [key] if bad else []
        print(f"  {key:32s} before {b:8d}  after {a:8d}  {'LEAK' if bad else 'ok'}")
    tenth = max(1, n // 10)
    first, last = median(times[:tenth]), median(times[-tenth:])
    slow_ok = last / first < SLOWDOWN_LIMIT
    print(f"  per cycle: first 10 % median {first * 1e3:.0f} ms, last 10 % {last * 1e3:.0f} ms")
    print(
        f"  [slowdown] last/first {last / first:.2f} (limit {SLOWDOWN_LIMIT}): {verdict(slow_ok)}"
    )
    print(f"  [leaks] {', '.join(leaks) or 'none'}: {verdict(not leaks)}")
    save("soak", {"cycles": n, "before": before, "after": after, "cycle_s": times})
    return 0 if not leaks and slow_ok else 3


if __name__ == "__main__":
    sys.exit(main())
