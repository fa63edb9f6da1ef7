"""One node, 1,000 endpoints: agent memory, and a policy change on all of them to enforced.

Pods (`bsc/p0000`...; ten label groups, so ten identities; no command and no ports, so
no process) are created in batches of 250 through `cilia apply`. A CiliumNetworkPolicy
selects all of them and allows ingress from groups g0-g2 on one TCP port; a change
moves that port (80 <-> 81).

- Memory: the agent's VmRSS with N endpoints against its VmRSS with none, same run.
- Policy change: from the start of `cilia apply` (and, apart, of POST /v1/objects/apply,
  what `cilia apply` sends) until the benchmark itself finds, in the pinned
  `cilia_policy` map, the new port allowed and the old one gone for every peer of every
  endpoint. Baselines in the same run: the same change with 1 endpoint (before the
  others exist), and, alternated with the changes at N, writing and deleting as many
  entries raw into the map (unrelated endpoint ids 40000+), plus `cilia apply` of an
  unchanged object (the CLI's own cost).

Usage: python -m benchmarks.bench_scale [--quick] [--pods N]   (root)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from benchmarks.common import Cilia, agent, log, median, p95, save, timed, verdict
from benchmarks.node import (
    BATCH,
    agent_pid,
    apply_all,
    namespace_yaml,
    pod_yaml,
    status_field,
    wide_pod_range,
)

from cilia.datapath.maps import PolicyMap, PolicyTuple
from cilia.policy.desired import Direction, Protocol

NS = "bsc"
GROUPS = 10
PEERS = ("g0", "g1", "g2")
RSS_TARGET_MB = 150.0
CHANGE_TARGET_S = 1.0
ENFORCE_TIMEOUT_S = 120.0
RAW_EP_BASE = 40000


def policy_yaml(port: int) -> str:
    return (
        f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"
        f"metadata: {{name: all, namespace: {NS}}}\n"
        f"spec:\n  endpointSelector: {{matchLabels: {{app: {NS}}}}}\n  ingress:\n"
        f"  - fromEndpoints: [{{matchExpressions: [{{key: group, operator: In, "
        f"values: [{', '.join(PEERS)}]}}]}}]\n"
        f'    toPorts: [{{ports: [{{port: "{port}", protocol: TCP}}]}}]\n'
    )


def pods(first: int, last: int) -> list[str]:
    return [pod_yaml(NS, f"p{i:04d}", f"g{i % GROUPS}") for i in range(first, last)]


class Enforcement:
    """Checks in the kernel's policy map that every endpoint allows its peers on a port."""

    def __init__(self, cilia: Cilia) -> None:
        self.cilia = cilia
        self.map = PolicyMap(str(cilia.config.bpf_dir / "maps" / "cilia_policy"))
        self.ep_ids: list[int] = []
        self.peers: list[int] = []

    def refresh(self) -> None:
        """Learn the endpoint ids and the peer identities from the API."""
        eps = self.cilia.client.request("GET", "/endpoint")
        self.ep_ids = [e["id"] for e in eps]
        self.peers = sorted(
            {
                e["identity"]
                for e in eps
                if any(f"group={g}" in lb for g in PEERS for lb in e["labels"])
            }
        )

    def keys(self, port: int) -> list[PolicyTuple]:
        ingress, tcp = int(Direction.INGRESS), int(Protocol.TCP)
        return [(ep, ingress, peer, port, tcp) for ep in self.ep_ids for peer in self.peers]

    def enforced(self, port: int, old: int) -> bool:
        return all(self.map.lookup(self.map.key(t)) is not None for t in self.keys(port)) and all(
            self.map.lookup(self.map.key(t)) is None for t in self.keys(old)
        )

    def wait(self, port: int, old: int, start: float) -> float:
        """Seconds from start until the map enforces port (and no longer old)."""
        while not self.enforced(port, old):
            if time.perf_counter() - start > ENFORCE_TIMEOUT_S:
                raise AssertionError(f"port {port} not enforced on all endpoints in time")
            time.sleep(0.005)
        return time.perf_counter() - start

    def raw_write(self) -> float:
        """Write and delete as many entries as one change does, straight into the map."""
        tuples = [
            (RAW_EP_BASE + i % 20000, 0, 60000 + i, 80, 6) for i in range(2 * len(self.keys(0)))
        ]
        start = time.perf_counter()
        for t in tuples:
            self.map.put(t)
        for t in tuples:
            self.map.remove(t)
        return time.perf_counter() - start


def change(cilia: Cilia, check: Enforcement, port: int, old: int, via_cli: bool) -> float:
    text = policy_yaml(port)
    start = time.perf_counter()
    if via_cli:
        cilia.apply(text)
    else:
        cilia.client.request("POST", "/objects/apply", json={"text": text, "source": "bench"})
    return check.wait(port, old, start)


def changes(
    cilia: Cilia, check: Enforcement, rounds: int, s: dict[str, list[float]], tag: str
) -> None:
    check.refresh()
    port = 80
    for k in range(rounds):
        for via_cli in (k % 2 == 0, k % 2 == 1):
            new = 161 - port  # 80 <-> 81
            name = f"{tag}: {'cilia apply' if via_cli else 'API'}"
            s.setdefault(name, []).append(change(cilia, check, new, port, via_cli))
            port = new
            if tag != "1 endpoint":
                s.setdefault("raw map writes", []).append(check.raw_write())
                s.setdefault("cilia apply unchanged", []).append(
                    timed(lambda: cilia.apply(namespace_yaml(NS)))[0]
                )
    if port != 80:  # leave the policy on 80 for the next phase
        change(cilia, check, 80, port, via_cli=False)


def rss_mb(pid: int) -> float:
    return status_field(pid, "VmRSS") / 1024


def create_pods(cilia: Cilia, first: int, last: int, s: dict[str, list[float]]) -> None:
    for lo in range(first, last, BATCH):
        hi = min(last, lo + BATCH)
        seconds, _ = timed(lambda lo=lo, hi=hi: apply_all(cilia, pods(lo, hi)))  # type: ignore[misc]
        s.setdefault("pods per second", []).append((hi - lo) / seconds)
        log(f"{hi} pods ({(hi - lo) / seconds:.1f}/s)")


def run(cilia: Cilia, n: int, rounds: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    s: dict[str, list[float]] = {}
    pid = agent_pid(cilia)
    apply_all(cilia, [namespace_yaml(NS), policy_yaml(80)])
    rss: dict[str, float] = {"0 endpoints": rss_mb(pid)}
    check = Enforcement(cilia)
    try:
        create_pods(cilia, 0, 1, s)
        changes(cilia, check, rounds, s, "1 endpoint")
        create_pods(cilia, 1, n, s)
        rss[f"{n} endpoints"] = rss_mb(pid)
        changes(cilia, check, rounds, s, f"{n} endpoints")
        rss[f"{n} endpoints, after changes"] = rss_mb(pid)
        rss["peak (VmHWM)"] = status_field(pid, "VmHWM") / 1024
        log("deleting the pods")
        for lo in range(0, n, BATCH):
            cilia.delete("---\n".join(pods(lo, min(n, lo + BATCH))))
    finally:
        check.map.close()
    return s, rss


def report(n: int, s: dict[str, list[float]], rss: dict[str, float]) -> bool:
    base, full = rss["0 endpoints"], rss[f"{n} endpoints"]
    print(f"\n== One node, {n} endpoints ==")
    for k, v in rss.items():
        print(f"  agent RSS {k:32s} {v:7.1f} MB")
    rss_ok = max(full, rss[f"{n} endpoints, after changes"]) < RSS_TARGET_MB
    print(
        f"  [mem] {full:.1f} MB with {n} endpoints ({full / base:.2f}x the 0-endpoint "
        f"{base:.1f} MB; target < {RSS_TARGET_MB:.0f} MB): {verdict(rss_ok)}"
    )
    print(f"  pod creation median {median(s['pods per second']):.1f} pods/s per batch")
    fmt: Callable[[str], str] = lambda k: (  # noqa: E731
        f"  {k:34s} median {median(s[k]) * 1e3:7.1f} ms  "
        f"p95 {p95(s[k]) * 1e3:7.1f} ms  n={len(s[k])}"
    )
    for k in (
        "cilia apply unchanged",
        "raw map writes",
        "1 endpoint: API",
        "1 endpoint: cilia apply",
    ):
        print(fmt(k) + "  (baseline)")
    api, cli = s[f"{n} endpoints: API"], s[f"{n} endpoints: cilia apply"]
    for k in (f"{n} endpoints: API", f"{n} endpoints: cilia apply"):
        print(fmt(k))
    one, raw = median(s["1 endpoint: API"]), median(s["raw map writes"])
    print(
        f"  change to enforced: API {median(api) / one:.1f}x the 1-endpoint change, "
        f"{median(api) / raw:.1f}x raw map writes"
    )
    ok = median(cli) < CHANGE_TARGET_S
    print(
        f"  [policy] cilia apply to enforced on all {n}: median {median(cli) * 1e3:.0f} ms "
        f"(target < {CHANGE_TARGET_S * 1e3:.0f} ms): {verdict(ok)}"
    )
    return rss_ok and ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 endpoints, fewer changes")
    ap.add_argument("--pods", type=int, help="number of endpoints (default 1000, quick 200)")
    args = ap.parse_args()
    n = args.pods or (200 if args.quick else 1000)
    rounds = 3 if args.quick else 25  # 50 changes: every endpoint log fills up (100 entries)
    with agent({"CILIA_SYNC_INTERVAL": "10", **wide_pod_range()}) as cilia:
        s, rss = run(cilia, n, rounds)
    ok = report(n, s, rss)
    save("scale", {"kernel": os.uname().release, "endpoints": n, "rss_mb": rss, **s})
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
