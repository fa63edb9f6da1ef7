"""Services: throughput through a ClusterIP, and a service update to enforced at scale.

1. iperf3 TCP from the client pod to the server pod of `throughput.py` (allowing L4
   policy on both sides), once to the server's pod IP and once to a ClusterIP Service
   selecting it (port 7000 -> targetPort 5201), separate runs in alternating order
   (ABBA), several rounds; a run's figure is the median of its 0.25 s reports. Every
   ClusterIP run is checked to have gone through the load balancer: the conntrack
   table holds a `service` entry from the client's port of iperf3's data connection
   to VIP:7000. Target: median per-round ratio ClusterIP / pod IP >= 0.95.
2. A second agent with 1,000 selector-less Services (one TCP port each), each with an
   Endpoints object of 10 backend addresses from 198.18.0.0/15 (the benchmarking
   range; nothing routes or answers there, none is ever sent a packet). Then N
   updates: one service's Endpoints gets one address replaced, through
   `POST /v1/objects/apply` (what `cilia apply` sends). The time runs from sending the
   apply until the benchmark itself reads the new backend set (new address in, old
   one out) from the pinned LB maps; the apply returns once the datapath is written,
   so the map is checked straight after it. Target: median < 50 ms. Same-run
   baselines, alternated with the updates: the apply of an unchanged Endpoints
   object (the API's fixed cost with the same objects stored), and the same update
   and unchanged apply with 1 service (before the others exist).
3. Benchmark 2 again with 100,000 unrelated conntrack entries in the table (reported):
   replacing a backend ends its flows, which takes a walk over the whole table.

Both agents use their own ClusterIP range (10.90-95.0.0/16, picked at random): every
agent with services load-balances the node's own sockets through a hook on the root
cgroup, so two agents sharing the default 10.96.0.0/16 would translate each other's
host connections.

Usage: python -m benchmarks.bench_services [--quick] [--updates N]   (root)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import random
import secrets
import socket
import sys
import time
from collections.abc import Sequence

from benchmarks.common import Cilia, agent, log, median, p95, save, timed, verdict
from benchmarks.throughput import INTERVAL, NS, PORT, Bench

from cilia.datapath import libbpf
from cilia.datapath.layout import CtEntry, CtKey, LbAddress, LbKey, LbService, LbSlotKey
from cilia.datapath.manager import boottime
from cilia.datapath.maps import BpfMap, CtMap, addr, addr_str

SVC_PORT = 7000
SVC_NAME = "iperf"
SERVICE = f"""
apiVersion: v1
kind: Service
metadata: {{name: {SVC_NAME}, namespace: {NS}}}
spec:
  selector: {{app: iperf-server}}
  ports: [{{name: iperf, port: {SVC_PORT}, targetPort: {PORT}, protocol: TCP}}]
"""
RATIO_TARGET = 0.95

SCALE_NS = "bsvc"
SERVICES = 1000
BACKENDS = 10
BATCH = 250  # services per request: 500 objects, under max_objects_per_request (1000)
FRONT_PORT, BACK_PORT = 80, 8080
BACKEND_BASE = 0xC6120000  # 198.18.0.0: initial backends 198.18.0.0 + service*10 + j
SPARE_BASE = 0xC6130000  # 198.19.0.0: the replacement addresses, one per update
UPDATE_TARGET_S = 0.050
ENFORCE_TIMEOUT_S = 5.0
CT_ENTRIES = 100_000


def service_range() -> dict[str, str]:
    """A ClusterIP range of this run's own (see the module docstring)."""
    return {"CILIA_SERVICE_CIDR": f"10.{90 + secrets.randbelow(6)}.0.0/16"}


def p90(xs: Sequence[float]) -> float:
    """90th percentile by nearest rank."""
    ordered = sorted(xs)
    return float(ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)])


# -- 1. throughput ---------------------------------------------------------


def service_row(cilia: Cilia, name: str) -> dict[str, object] | None:
    rows = cilia.client.request("GET", "/service")
    return next((r for r in rows if r["service"] == name), None)


def setup_service(b: Bench) -> str:
    """Apply the Service; return its VIP once the kernel's LB maps hold the server."""
    b.cilia.apply(SERVICE)
    backend = f"{b.server_ip}:{PORT}"
    deadline = time.monotonic() + 20
    while True:
        row = service_row(b.cilia, f"{NS}/{SVC_NAME}")
        if row is not None and row["backends"] == [backend]:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"service {NS}/{SVC_NAME} never got its backend: {row}")
        time.sleep(0.1)
    frontend = str(row["frontend"])
    vip = frontend.rsplit(":", 1)[0]
    lb = b.cilia.client.request("GET", "/bpf/lb")
    entry = next((e for e in lb if e["frontend"] == frontend), None)
    assert entry is not None and [x["backend"] for x in entry["backends"]] == [backend], entry
    assert entry["id"] == row["id"], (entry, row)
    return vip


def iperf(b: Bench, ip: str, port: int) -> tuple[float, int]:
    """(Gbit/s, client port of the data connection) of one run: the median of its
    0.25 s reports after the first (slow start), so a burst of other work on the
    shared machine during part of a run weighs little."""
    res = b.cilia.run(
        "exec", f"{NS}/client", "--",
        "iperf3", "-c", ip, "-p", str(port), "-t", str(b.seconds), "-i", str(INTERVAL), "-J",
    )  # fmt: skip
    out = json.loads(res.stdout)
    connected = out["start"]["connected"]
    assert len(connected) == 1 and connected[0]["remote_host"] == ip, connected
    reports = [float(i["sum"]["bits_per_second"]) / 1e9 for i in out["intervals"][1:]]
    assert len(reports) >= 3, out["intervals"]
    return median(reports), connected[0]["local_port"]


def service_flows(b: Bench, client_ip: str, vip: str) -> set[int]:
    """Client ports of the conntrack `service` entries towards VIP:SVC_PORT."""
    ct = b.cilia.client.request("GET", "/bpf/ct")
    return {
        int(r["source"].rsplit(":", 1)[1])
        for r in ct
        if r["direction"] == "service"
        and r["protocol"] == "TCP"
        and r["destination"] == f"{vip}:{SVC_PORT}"
        and r["source"].startswith(f"{client_ip}:")
    }


def throughput(b: Bench, vip: str, client_ip: str, rounds: int) -> dict[str, list[float]]:
    """Gbit/s of pod-IP and ClusterIP runs, ABBA order; each ClusterIP run checked."""
    targets = {"pod IP": (b.server_ip, PORT), "ClusterIP": (vip, SVC_PORT)}
    samples: dict[str, list[float]] = {k: [] for k in targets}
    for r in range(rounds):
        order = list(targets) if r % 2 == 0 else list(targets)[::-1]
        for cfg in order:
            packets = b.datapath_packets()
            gbps, port = iperf(b, *targets[cfg])
            if b.datapath_packets() == packets:
                raise AssertionError(f"{cfg} run: the datapath counted no packet")
            flows = service_flows(b, client_ip, vip)
            if (port in flows) != (cfg == "ClusterIP"):
                raise AssertionError(f"{cfg} run from port {port}: service CT entries {flows}")
            samples[cfg].append(gbps)
        log(
            f"round {r + 1}/{rounds}: "
            + " ".join(f"{c} {samples[c][-1]:.2f}" for c in targets)
            + f" Gbit/s, ratio {samples['ClusterIP'][-1] / samples['pod IP'][-1]:.3f}"
        )
    return samples


def run_throughput(seconds: int, rounds: int) -> dict[str, object]:
    env = {"CILIA_SYNC_INTERVAL": "100000", "CILIA_CT_GC_INTERVAL": "100000"}
    with agent(env | service_range()) as cilia:
        b = Bench(cilia, seconds)
        b.setup()
        b.sanity()
        client_ip = cilia.client.request("GET", f"/endpoint/{NS}/client")["ipv4"]
        vip = setup_service(b)
        log(f"pods ready: server {b.server_ip}, service {vip}:{SVC_PORT} -> {b.server_ip}:{PORT}")
        samples = throughput(b, vip, client_ip, rounds)
    ratios = [c / p for c, p in zip(samples["ClusterIP"], samples["pod IP"], strict=True)]
    return {"samples": samples, "ratios": ratios, "vip": vip}


# -- 2. update to enforced -------------------------------------------------


def ip_of(n: int) -> str:
    return socket.inet_ntoa(n.to_bytes(4, "big"))


def service_yaml(i: int) -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: s{i:04d}, namespace: {SCALE_NS}}}\n"
        f"spec:\n  ports: [{{name: http, port: {FRONT_PORT}, targetPort: {BACK_PORT}, "
        f"protocol: TCP}}]\n"
    )


def endpoints_yaml(i: int, addresses: Sequence[str]) -> str:
    ips = ", ".join(f"{{ip: {a}}}" for a in addresses)
    return (
        f"apiVersion: v1\nkind: Endpoints\nmetadata: {{name: s{i:04d}, namespace: {SCALE_NS}}}\n"
        f"subsets:\n- addresses: [{ips}]\n  ports: [{{name: http, port: {BACK_PORT}}}]\n"
    )


class LbMaps:
    """Reads one frontend's backend set from the agent's pinned LB maps."""

    def __init__(self, cilia: Cilia) -> None:
        maps = cilia.config.bpf_dir / "maps"
        self.services = BpfMap(str(maps / "cilia_lb_services"), LbKey, LbService)
        self.slots = BpfMap(str(maps / "cilia_lb_slots"), LbSlotKey, ctypes.c_uint32)
        self.backends = BpfMap(str(maps / "cilia_lb_backends"), ctypes.c_uint32, LbAddress)

    def close(self) -> None:
        for m in (self.services, self.slots, self.backends):
            m.close()

    def backend_set(self, vip: str, port: int) -> set[tuple[str, int]] | None:
        """{(ip, port)} the kernel balances vip:port/TCP over (None: no such frontend)."""
        svc = self.services.lookup(LbKey(addr(vip), socket.htons(port), socket.IPPROTO_TCP, 0))
        if svc is None:
            return None
        out = set()
        for slot in range(1, int(svc.count) + 1):
            bid = self.slots.lookup(LbSlotKey(svc.rev_nat, slot))
            b = self.backends.lookup(bid) if bid is not None else None
            if b is None:
                return None  # a slot without its backend: never expected
            out.add((addr_str(b.addr), socket.ntohs(b.port)))
        return out


def fill_ct(ct: CtMap, n: int) -> None:
    """n live UDP entries 172.16.x.y:p -> 192.0.2.1:53 of no service, in batches."""
    expires = boottime() + 3600
    for lo in range(0, n, 65536):
        count = min(n, lo + 65536) - lo
        keys, values = (CtKey * count)(), (CtEntry * count)()
        for j in range(count):
            i = lo + j
            keys[j] = CtKey(addr(ip_of(0xAC100000 + (i >> 4))), addr("192.0.2.1"))
            keys[j].sport, keys[j].dport = socket.htons(1024 + (i & 15)), socket.htons(53)
            keys[j].proto = socket.IPPROTO_UDP
            values[j] = CtEntry(expires=expires, packets=1)
        libbpf.map_update_batch(ct.fd, keys, values, count)


class Scale:
    """The services of benchmark 2, their current backends and the updates."""

    def __init__(self, cilia: Cilia) -> None:
        self.cilia = cilia
        self.maps = LbMaps(cilia)
        self.addresses: dict[int, list[str]] = {}
        self.vips: dict[int, str] = {}
        self.spare = 0

    def apply(self, text: str) -> list[dict[str, str]]:
        res = self.cilia.client.request(
            "POST", "/objects/apply", json={"text": text, "source": "b"}
        )
        return list(res["results"])

    def create(self, first: int, last: int) -> float:
        """Services first..last-1 with their Endpoints, in batches; seconds taken."""
        start = time.perf_counter()
        for lo in range(first, last, BATCH):
            docs = []
            for i in range(lo, min(last, lo + BATCH)):
                self.addresses[i] = [
                    ip_of(BACKEND_BASE + i * BACKENDS + j) for j in range(BACKENDS)
                ]
                docs += [service_yaml(i), endpoints_yaml(i, self.addresses[i])]
            self.apply("---\n".join(docs))
            log(f"{min(last, lo + BATCH)} services applied")
        seconds = time.perf_counter() - start
        rows = self.cilia.client.request("GET", "/service")
        by_name = {r["service"]: r for r in rows}
        for i in range(first, last):
            row = by_name[f"{SCALE_NS}/s{i:04d}"]
            self.vips[i] = str(row["frontend"]).rsplit(":", 1)[0]
            assert len(row["backends"]) == BACKENDS, row
            self.check(i)
        return seconds

    def expected(self, i: int) -> set[tuple[str, int]]:
        return {(a, BACK_PORT) for a in self.addresses[i]}

    def check(self, i: int) -> bool:
        return self.maps.backend_set(self.vips[i], FRONT_PORT) == self.expected(i)

    def update(self, i: int, j: int) -> tuple[float, float]:
        """Replace backend j of service i; (API round trip, send to seen in the map)."""
        self.addresses[i][j] = ip_of(SPARE_BASE + self.spare)
        self.spare += 1
        text = endpoints_yaml(i, self.addresses[i])
        start = time.perf_counter()
        results = self.apply(text)
        trip = time.perf_counter() - start
        assert [r["action"] for r in results] == ["configured"], results
        while not self.check(i):
            if time.perf_counter() - start > ENFORCE_TIMEOUT_S:
                raise AssertionError(f"s{i:04d}: new backend not in the kernel map in time")
            time.sleep(0.001)
        seen = time.perf_counter() - start
        if seen - trip > 0.005:
            log(f"s{i:04d}: the map lagged the apply's answer by {(seen - trip) * 1e3:.1f} ms")
        return trip, seen

    def unchanged(self, i: int) -> float:
        """Round trip of applying service i's Endpoints as they are."""
        text = endpoints_yaml(i, self.addresses[i])
        seconds, results = timed(lambda: self.apply(text))
        assert [r["action"] for r in results] == ["unchanged"], results
        assert self.check(i)
        return float(seconds)

    def rounds(self, n: int, services: int, tag: str, s: dict[str, list[float]]) -> None:
        """n updates alternated with n unchanged applies (ABBA), on random services."""
        rng = random.Random(tag)
        for k in range(n):
            i, j = rng.randrange(services), rng.randrange(BACKENDS)
            for step in ("update", "unchanged") if k % 2 == 0 else ("unchanged", "update"):
                if step == "update":
                    trip, seen = self.update(i, j)
                    s.setdefault(f"{tag}: update, API round trip", []).append(trip)
                    s.setdefault(f"{tag}: update to enforced", []).append(seen)
                else:
                    s.setdefault(f"{tag}: unchanged apply", []).append(self.unchanged(i))
        last = s[f"{tag}: update to enforced"]
        log(f"{tag}: {n} updates, median {median(last) * 1e3:.1f} ms")


def run_updates(updates: int, ct_updates: int) -> dict[str, object]:
    s: dict[str, list[float]] = {}
    # Drift repair at its default interval; no CT GC to delete the unrelated entries.
    env = {"CILIA_SYNC_INTERVAL": "10", "CILIA_CT_GC_INTERVAL": "100000"} | service_range()
    with agent(env) as cilia:
        scale = Scale(cilia)
        try:
            scale.apply(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {SCALE_NS}}}\n")
            scale.create(0, 1)
            scale.rounds(updates, 1, "1 service", s)
            load = scale.create(1, SERVICES)
            log(f"{SERVICES} services of {BACKENDS} backends in {load:.1f} s")
            lb = cilia.client.request("GET", "/bpf/lb")
            assert len(lb) == SERVICES and all(len(e["backends"]) == BACKENDS for e in lb)
            scale.rounds(updates, SERVICES, f"{SERVICES} services", s)
            assert all(scale.check(i) for i in range(SERVICES)), "a service lost its backends"
            ct = CtMap(str(cilia.config.bpf_dir / "maps" / "cilia_ct"))
            try:
                fill_ct(ct, CT_ENTRIES)
            finally:
                ct.close()
            log(f"{CT_ENTRIES:,} unrelated entries in the CT table")
            scale.rounds(ct_updates, SERVICES, f"{SERVICES} services + {CT_ENTRIES // 1000}k CT", s)
        finally:
            scale.maps.close()
    return {"samples": s, "load_seconds": load}


# -- report ------------------------------------------------------------------


def report(tp: dict[str, object], up: dict[str, object]) -> bool:
    samples: dict[str, list[float]] = tp["samples"]  # type: ignore[assignment]
    ratios: list[float] = tp["ratios"]  # type: ignore[assignment]
    ratio = median(ratios)
    ok1 = ratio >= RATIO_TARGET
    print("\n== Services: throughput through a ClusterIP (iperf3 TCP, policy on both sides) ==")
    print(
        f"  pod IP {median(samples['pod IP']):.2f}  ClusterIP {median(samples['ClusterIP']):.2f}"
        f" Gbit/s (medians of {len(ratios)} rounds)"
    )
    print(
        f"  [1] ClusterIP / pod IP = {ratio:.3f} (target >= {RATIO_TARGET}): {verdict(ok1)}"
        f"  (per round: {', '.join(f'{x:.3f}' for x in ratios)})"
    )
    s: dict[str, list[float]] = up["samples"]  # type: ignore[assignment]
    print(f"\n== Services: update to enforced ({SERVICES} services of {BACKENDS} backends) ==")
    for k, v in s.items():
        print(
            f"  {k:46s} median {median(v) * 1e3:6.1f} ms  p90 {p90(v) * 1e3:6.1f} ms  "
            f"p95 {p95(v) * 1e3:6.1f} ms  n={len(v)}"
        )
    load: float = up["load_seconds"]  # type: ignore[assignment]
    print(f"  loading {SERVICES} services with their Endpoints ({BATCH} per request): {load:.1f} s")
    big = s[f"{SERVICES} services: update to enforced"]
    base = median(s[f"{SERVICES} services: unchanged apply"])
    one = median(s["1 service: update to enforced"])
    ok2 = median(big) < UPDATE_TARGET_S
    print(
        f"  [2] update to enforced with {SERVICES} services: median {median(big) * 1e3:.1f} ms, "
        f"p90 {p90(big) * 1e3:.1f} ms (target median < {UPDATE_TARGET_S * 1e3:.0f} ms): "
        f"{verdict(ok2)}; {median(big) / base:.2f}x an unchanged apply "
        f"({base * 1e3:.1f} ms), {median(big) / one:.1f}x the same update with 1 service"
    )
    ct = f"{SERVICES} services + {CT_ENTRIES // 1000}k CT"
    print(
        f"  [3] the same with {CT_ENTRIES:,} unrelated CT entries: update to enforced median "
        f"{median(s[ct + ': update to enforced']) * 1e3:.1f} ms, unchanged apply "
        f"{median(s[ct + ': unchanged apply']) * 1e3:.1f} ms (reported)"
    )
    return ok1 and ok2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 s runs, 6 rounds, 10 updates")
    ap.add_argument("--updates", type=int, help="updates per phase (default 30, quick 10)")
    args = ap.parse_args()
    seconds, rounds, updates = (2, 6, 10) if args.quick else (3, 12, 30)
    updates = args.updates or updates
    tp = run_throughput(seconds, rounds)
    up = run_updates(updates, max(4, updates // 3))
    ok = report(tp, up)
    save(
        "services-quick" if args.quick else "services",
        {"seconds": seconds, "kernel": os.uname().release, "throughput": tp, "updates": up},
    )
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
