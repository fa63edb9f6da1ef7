"""Datapath throughput: iperf3 TCP between two pods, Cilia against same-run baselines.

1. Cilia enforcing an allowing policy with 10,000 unrelated policy-map and
   IP-to-identity entries, against the same pods with no program attached
   (target: ratio >= 0.95).
2. The same with 10 and with 100,000 unrelated entries (target: the two
   ratios within 3%: lookups are O(1)).
3. The same flow behind 10,000 iptables rules in a FORWARD chain (no BPF
   program) against Cilia (reported).

Configurations alternate inside every round, and the order rotates from round
to round, so slow drift of the shared machine affects all of them alike.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmarks.common import Cilia, agent, log, median, save, verdict

from cilia.datapath.maps import IpcacheMap, PolicyMap

NS = "bench"
PORT = 5201
MANIFEST = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {NS}, labels: {{app: iperf-server}}}}
spec:
  containers:
  - name: iperf
    command: [iperf3, -s, -p, "{PORT}"]
    ports: [{{containerPort: {PORT}}}]
  - name: web
    ports: [{{containerPort: 80}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}, labels: {{app: iperf-client}}}}
spec:
  containers:
  - name: idle
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: iperf-allow, namespace: {NS}}}
specs:
- endpointSelector: {{matchLabels: {{app: iperf-server}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: iperf-client}}}}]
    toPorts: [{{ports: [{{port: "{PORT}", protocol: TCP}}]}}]
- endpointSelector: {{matchLabels: {{app: iperf-client}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{app: iperf-server}}}}]
    toPorts: [{{ports: [{{port: "{PORT}", protocol: TCP}}]}}]
"""

INTERVAL = 0.25  # seconds per iperf3 report
DETACH_SETTLE = 0.2  # seconds for unpinned links to be released
SETTLE, KEEP = 1, 3  # per state period: reports discarded after a switch, reports kept
REPORT = re.compile(r"^\[\s*\d+\]\s+[\d.]+-[\d.]+\s+sec\s+\S+\s+\S+\s+([\d.]+) Mbits/sec")

FOREIGN_EP_BASE = 40000  # endpoint ids never handed out in this run
FOREIGN_EP_SPAN = 20000
FOREIGN_IDENTITY_BASE = 60000


class ForeignEntries:
    """Unrelated entries written straight into the pinned policy and ipcache maps.

    Entry i is the same in both maps for every count, so growing or shrinking
    the set only touches the difference.
    """

    def __init__(self, cilia: Cilia) -> None:
        maps = cilia.config.bpf_dir / "maps"
        self.policy = PolicyMap(str(maps / "cilia_policy"))
        self.ipcache = IpcacheMap(str(maps / "cilia_ipcache"))
        self.count = 0

    @staticmethod
    def policy_tuple(i: int) -> tuple[int, int, int, int, int]:
        ep_id = FOREIGN_EP_BASE + i % FOREIGN_EP_SPAN
        identity = FOREIGN_IDENTITY_BASE + i // FOREIGN_EP_SPAN
        return (ep_id, i % 2, identity, 8000 + i % 7, 6)

    @staticmethod
    def prefix(i: int) -> str:
        return f"172.{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32"

    def resize(self, n: int) -> None:
        """Make exactly n unrelated entries present in each map."""
        for i in range(self.count, n):
            self.policy.put(self.policy_tuple(i))
            self.ipcache.set(self.prefix(i), FOREIGN_IDENTITY_BASE + i % 1000)
        for i in range(n, self.count):
            self.policy.remove(self.policy_tuple(i))
            self.ipcache.remove(self.prefix(i))
        self.count = n

    def close(self) -> None:
        self.resize(0)
        self.policy.close()
        self.ipcache.close()


class IptablesChain:
    """N non-matching rules then ACCEPT, in a uniquely named chain jumped to from FORWARD."""

    def __init__(self, name: str, ifnames: list[str], rules: int) -> None:
        self.name = name
        self.ifnames = ifnames
        self.rules = rules
        self.jumps = False
        self.created_table = not self._filter_table_exists()

    @staticmethod
    def _filter_table_exists() -> bool:
        return (
            subprocess.run(["nft", "list", "table", "ip", "filter"], capture_output=True).returncode
            == 0
        )

    def create(self) -> None:
        lines = ["*filter", f":{self.name} - [0:0]"]
        lines += [
            f"-A {self.name} -s 172.{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32 "
            f"-p tcp -m tcp --dport {PORT} -j ACCEPT"
            for i in range(self.rules)
        ]
        lines += [f"-A {self.name} -j ACCEPT", "COMMIT", ""]
        subprocess.run(
            ["iptables-restore", "--noflush"], input="\n".join(lines), text=True, check=True
        )

    def jump(self, on: bool) -> None:
        """Add or remove the FORWARD jumps for traffic from both pods."""
        if on == self.jumps:
            return
        for ifname in self.ifnames:
            op = ["-I", "FORWARD", "1"] if on else ["-D", "FORWARD"]
            subprocess.run(["iptables", *op, "-i", ifname, "-j", self.name], check=True)
        self.jumps = on

    def remove(self) -> None:
        """Remove jumps and chain (and the filter table if this run created it empty)."""
        for ifname in self.ifnames:
            while (
                subprocess.run(
                    ["iptables", "-D", "FORWARD", "-i", ifname, "-j", self.name],
                    capture_output=True,
                ).returncode
                == 0
            ):
                pass
        self.jumps = False
        for flag in ("-F", "-X"):
            subprocess.run(["iptables", flag, self.name], capture_output=True)
        if self.created_table:
            rules = subprocess.run(
                ["iptables", "-S"], capture_output=True, text=True
            ).stdout.splitlines()
            if all(line.startswith("-P ") and line.endswith(" ACCEPT") for line in rules):
                subprocess.run(["nft", "delete", "table", "ip", "filter"], capture_output=True)

    def leftover(self) -> bool:
        return (
            self.name in subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
        )


@dataclass
class Bench:
    """Two pods and the switches between configurations."""

    cilia: Cilia
    seconds: int
    server_ip: str = ""
    ifnames: dict[str, str] = field(default_factory=dict)
    attached: bool = True

    def setup(self) -> None:
        self.cilia.apply(MANIFEST)
        server = self.cilia.client.request("GET", f"/endpoint/{NS}/server")
        client = self.cilia.client.request("GET", f"/endpoint/{NS}/client")
        self.server_ip = server["ipv4"]
        self.ifnames = {"server": server["interface"], "client": client["interface"]}
        assert server["ingress-enforcement"] and client["egress-enforcement"]

    def attach(self, on: bool) -> None:
        """Attach (regenerate) or detach (unpin the links of) both pods' programs."""
        if on == self.attached:
            return
        links = self.cilia.config.bpf_dir / "links"
        for pod, ifname in self.ifnames.items():
            if on:
                self.cilia.client.request("POST", f"/endpoint/{NS}/{pod}/regenerate")
            else:
                for hook in ("ingress", "egress"):
                    (links / f"{ifname}_{hook}").unlink()
        if not on:
            # The kernel releases an unpinned link asynchronously: a packet sent at once
            # may still meet the program (the sanity probe's first SYN did).
            time.sleep(DETACH_SETTLE)
        self.attached = on
        status = self.cilia.client.request("GET", "/status")
        assert status["datapath"]["programs-attached"] == (2 if on else 0), status

    def datapath_packets(self) -> int:
        return sum(r["packets"] for r in self.cilia.client.request("GET", "/bpf/metrics"))

    def iperf(self) -> float:
        """Gbit/s received by the server in one run; checks the datapath saw it or not."""
        before = self.datapath_packets()
        res = self.cilia.run(
            "exec", f"{NS}/client", "--",
            "iperf3", "-c", self.server_ip, "-p", str(PORT), "-t", str(self.seconds), "-J",
        )  # fmt: skip
        seen = self.datapath_packets() - before
        if self.attached != (seen > 0):
            raise AssertionError(f"attached={self.attached} but datapath counted {seen} packets")
        return float(json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9

    def alternating(self, states: Sequence[Callable[[], None]], periods: int) -> list[list[float]]:
        """One iperf3 flow whose configuration switches every few reports.

        The programs attach and detach under the running flow, so the
        configurations are compared a fraction of a second apart. Returns the
        kept reports (Gbit/s) of each state.
        """
        period = SETTLE + KEEP
        argv = ["exec", f"{NS}/client", "--", "iperf3", "-c", self.server_ip, "-p", str(PORT)]
        argv += ["-t", str(round(periods * period * INTERVAL)), "-i", str(INTERVAL)]
        cmd = [sys.executable, "-m", "cilia.cli.main", *argv, "--forceflush", "-f", "m"]
        before = self.datapath_packets()
        kept: list[list[float]] = [[] for _ in states]
        states[0]()
        proc = subprocess.Popen(cmd, env=self.cilia.env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        k = 0
        for line in proc.stdout:
            m = REPORT.match(line)
            if m is None or "sender" in line or "receiver" in line:
                continue
            n, pos = divmod(k, period)
            if pos >= SETTLE:
                kept[n % len(states)].append(float(m[1]) / 1e3)
            k += 1
            if k % period == 0 and k < periods * period:
                states[(k // period) % len(states)]()
        if proc.wait() != 0 or k < periods * period:
            raise AssertionError(f"iperf3 exited {proc.returncode} after {k} reports")
        if self.datapath_packets() == before:
            raise AssertionError("the datapath saw none of the flow")
        return kept

    def sanity(self) -> None:
        """The policy is really enforced while attached, and really gone while detached."""
        denied_attached = not self.cilia.probe(f"{NS}/client", f"{NS}/server", 80)
        self.attach(False)
        allowed_detached = self.cilia.probe(f"{NS}/client", f"{NS}/server", 80)
        self.attach(True)
        assert denied_attached and allowed_detached, (denied_attached, allowed_detached)


def rotate(items: list[str], r: int) -> list[str]:
    return items[r % len(items) :] + items[: r % len(items)]


def entries_benchmark(
    b: Bench, foreign: ForeignEntries, rounds: int, periods: int
) -> dict[str, object]:
    """Benchmarks 1 and 2: Cilia / no program with 10, 10k and 100k unrelated entries.

    Per round and size, one flow alternates between no program and Cilia;
    the ratio of that flow is median(Cilia reports) / median(no-program reports).
    """
    sizes = ["10", "10000", "100000"]
    ratios: dict[str, list[float]] = {s: [] for s in sizes}
    medians: dict[str, dict[str, list[float]]] = {s: {"none": [], "cilia": []} for s in sizes}
    for r in range(rounds):
        for k, size in enumerate(rotate(sizes, r)):
            foreign.resize(int(size))
            cfgs = ["none", "cilia"] if (r + k) % 2 == 0 else ["cilia", "none"]
            states = [functools.partial(b.attach, c == "cilia") for c in cfgs]
            kept = dict(zip(cfgs, b.alternating(states, periods), strict=True))
            for cfg, xs in kept.items():
                medians[size][cfg].append(median(xs))
            ratios[size].append(medians[size]["cilia"][-1] / medians[size]["none"][-1])
            log(
                f"round {r + 1}/{rounds} entries={size}: none {medians[size]['none'][-1]:.2f} "
                f"cilia {medians[size]['cilia'][-1]:.2f} Gbit/s, ratio {ratios[size][-1]:.3f}"
            )
    return {"ratios": ratios, "medians": medians}


def iptables_benchmark(b: Bench, chain: IptablesChain, rounds: int) -> dict[str, object]:
    """Benchmark 3: 10,000 iptables rules (no program) against Cilia (10k unrelated entries)."""
    cfgs = ["none", "iptables", "cilia"]
    samples: dict[str, list[float]] = {c: [] for c in cfgs}
    for r in range(rounds):
        for cfg in rotate(cfgs, r):
            b.attach(cfg == "cilia")
            chain.jump(cfg == "iptables")
            samples[cfg].append(b.iperf())
        chain.jump(False)
        log(f"round {r + 1}/{rounds}: " + " ".join(f"{c} {samples[c][-1]:.2f}" for c in cfgs))
    return {"samples": samples}


def paired_ratios(num: list[float], den: list[float]) -> list[float]:
    return [n / d for n, d in zip(num, den, strict=True)]


def bootstrap_spread(a: list[float], b: list[float], n: int = 2000) -> tuple[float, float]:
    """5th and 95th percentile of (median(b) - median(a)) / median(a), rounds resampled."""
    rng = random.Random(1)
    diffs = sorted(
        (median(rng.choices(b, k=len(b))) - (ma := median(rng.choices(a, k=len(a))))) / ma
        for _ in range(n)
    )
    return diffs[n // 20], diffs[n - n // 20 - 1]


def report(
    ent_ratios: dict[str, list[float]],
    ent_medians: dict[str, dict[str, list[float]]],
    ipt: dict[str, list[float]],
) -> bool:
    """Print the results; True when every target is met."""
    print("\n== Throughput (iperf3 TCP, pod to pod): Gbit/s medians and same-run ratios ==")
    ratios: dict[str, float] = {}
    for size, s in ent_medians.items():
        per_round = ent_ratios[size]
        ratios[size] = median(per_round)
        rounds = ", ".join(f"{x:.3f}" for x in per_round)
        print(
            f"  unrelated entries {int(size):>7,}: no program {median(s['none']):6.2f}  "
            f"Cilia {median(s['cilia']):6.2f}  Cilia/none {ratios[size]:.3f}  "
            f"(per round: {rounds})"
        )
    ok1 = ratios["10000"] >= 0.95
    spread = abs(ratios["10"] - ratios["100000"]) / ratios["10"]
    ok2 = spread <= 0.03
    lo, hi = bootstrap_spread(ent_ratios["10"], ent_ratios["100000"])
    print(
        f"  [1] Cilia (allowing policy + 10k unrelated entries) / no program = "
        f"{ratios['10000']:.3f} (target >= 0.95): {verdict(ok1)}"
    )
    print(
        f"  [2] Cilia/none at 10 vs 100k unrelated entries: {ratios['10']:.3f} vs "
        f"{ratios['100000']:.3f}, {spread * 100:.1f}% apart (target <= 3%): {verdict(ok2)}; "
        f"rough 90% interval of the difference {lo * 100:+.1f}%..{hi * 100:+.1f}%"
    )
    m = {c: median(v) for c, v in ipt.items()}
    c_over_i = median(paired_ratios(ipt["cilia"], ipt["iptables"]))
    i_over_n = median(paired_ratios(ipt["iptables"], ipt["none"]))
    c_over_n = median(paired_ratios(ipt["cilia"], ipt["none"]))
    print(
        f"  [3] no program {m['none']:.2f}, 10k iptables rules {m['iptables']:.2f}, "
        f"Cilia {m['cilia']:.2f} Gbit/s: Cilia/iptables {c_over_i:.2f} "
        f"(iptables/none {i_over_n:.3f}, Cilia/none {c_over_n:.3f})"
    )
    return ok1 and ok2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 s runs, 2 rounds")
    args = ap.parse_args()
    # periods: state periods of one alternating flow (each SETTLE+KEEP reports long)
    seconds, rounds, periods, ipt_rounds = (1, 2, 4, 2) if args.quick else (3, 5, 8, 4)
    ok = False
    with agent({"CILIA_SYNC_INTERVAL": "100000", "CILIA_CT_GC_INTERVAL": "100000"}) as cilia:
        b = Bench(cilia, seconds)
        b.setup()
        b.sanity()
        log(f"pods ready: server {b.server_ip}, devices {b.ifnames}; policy enforced")
        foreign = ForeignEntries(cilia)
        chain = IptablesChain(f"CILIA-BENCH-{cilia.tag}", list(b.ifnames.values()), 10_000)
        try:
            ent = entries_benchmark(b, foreign, rounds, periods)
            foreign.resize(10_000)
            chain.create()
            log(f"iptables chain {chain.name} with {chain.rules} rules + ACCEPT loaded")
            ipt = iptables_benchmark(b, chain, ipt_rounds)
        finally:
            chain.remove()
            foreign.close()
            b.attach(True)
        if chain.leftover():
            print(f"LEFTOVER iptables chain {chain.name}", file=sys.stderr)
            return 1
        ok = report(ent["ratios"], ent["medians"], ipt["samples"])  # type: ignore[arg-type]
        save(
            "throughput-quick" if args.quick else "throughput",
            {"seconds": seconds, "kernel": os.uname().release, "entries": ent, "iptables": ipt},
        )
    return 0 if ok else 3  # 3: ran, but a target was missed


if __name__ == "__main__":
    sys.exit(main())
