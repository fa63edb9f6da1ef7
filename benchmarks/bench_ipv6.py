"""IPv6 datapath throughput: iperf3 TCP between two dual-stack pods, same-run baselines.

1. IPv6 with Cilia enforcing an allowing policy, against the same pods with no
   program attached: one flow switching between the two every few reports
   (target: ratio >= 0.95).
2. IPv6 against IPv4, both with Cilia's policy: separate runs, alternating order
   (reported: the extension-header walk and 16-byte keys cost this much, if any).
3. Benchmark 1 for IPv4 on the same pods (reported: the IPv4 ratio measured in the
   same run, to tell the family's cost from the machine's noise).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

from benchmarks.common import agent, log, median, save, verdict
from benchmarks.throughput import NS, Bench, rotate


def attached_vs_detached(b: Bench, rounds: int, periods: int, family: str) -> list[float]:
    """Benchmarks 1 and 3: per round, median(Cilia) / median(no program) of one flow."""
    ratios = []
    for r in range(rounds):
        cfgs = ["none", "cilia"] if r % 2 == 0 else ["cilia", "none"]
        states = [functools.partial(b.attach, c == "cilia") for c in cfgs]
        kept = dict(zip(cfgs, b.alternating(states, periods), strict=True))
        ratios.append(median(kept["cilia"]) / median(kept["none"]))
        log(
            f"round {r + 1}/{rounds} {family}: none {median(kept['none']):.2f} "
            f"cilia {median(kept['cilia']):.2f} Gbit/s, ratio {ratios[-1]:.3f}"
        )
    return ratios


def ipv6_vs_ipv4(b: Bench, addresses: dict[str, str], rounds: int) -> dict[str, list[float]]:
    """Benchmark 2: Gbit/s of IPv4 and IPv6 runs with the programs attached."""
    samples: dict[str, list[float]] = {f: [] for f in addresses}
    b.attach(True)
    for r in range(rounds):
        for family in rotate(list(addresses), r):
            b.server_ip = addresses[family]
            samples[family].append(b.iperf())
        log(f"round {r + 1}/{rounds}: " + " ".join(f"{f} {samples[f][-1]:.2f}" for f in samples))
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs, 2 rounds")
    args = ap.parse_args()
    seconds, rounds, periods = (1, 2, 4) if args.quick else (3, 5, 8)
    env = {"CILIA_SYNC_INTERVAL": "100000", "CILIA_CT_GC_INTERVAL": "100000"}
    env |= {"CILIA_ENABLE_IPV6": "true", "CILIA_IPV6_RANGE": f"fd00:c1a:{os.getpid():x}::/96"}
    with agent(env) as cilia:
        b = Bench(cilia, seconds)
        b.setup()
        server = cilia.client.request("GET", f"/endpoint/{NS}/server")
        addresses = {"IPv4": server["ipv4"], "IPv6": server["ipv6"]}
        assert addresses["IPv6"], "the server pod has no IPv6 address"
        b.sanity()  # probes both families: denied attached, allowed detached
        log(f"pods ready: server {addresses}; policy enforced in both families")
        ratios: dict[str, list[float]] = {}
        for family in ("IPv6", "IPv4"):
            b.server_ip = addresses[family]
            ratios[family] = attached_vs_detached(b, rounds, periods, family)
        samples = ipv6_vs_ipv4(b, addresses, rounds)
    ratio, ratio4 = median(ratios["IPv6"]), median(ratios["IPv4"])
    ok = ratio >= 0.95
    v6_over_v4 = median([s6 / s4 for s6, s4 in zip(samples["IPv6"], samples["IPv4"], strict=True)])
    print("\n== IPv6 throughput (iperf3 TCP, pod to pod, policy enforced) ==")
    print(
        f"  [1] IPv6 Cilia / IPv6 no program = {ratio:.3f} (target >= 0.95): {verdict(ok)}"
        f"  (per round: {', '.join(f'{x:.3f}' for x in ratios['IPv6'])})"
    )
    print(
        f"  [2] IPv6 {median(samples['IPv6']):.2f} vs IPv4 {median(samples['IPv4']):.2f} Gbit/s"
        f" with policy: IPv6/IPv4 {v6_over_v4:.3f} (reported)"
    )
    print(
        f"  [3] IPv4 Cilia / IPv4 no program = {ratio4:.3f} in the same run (reported)"
        f"  (per round: {', '.join(f'{x:.3f}' for x in ratios['IPv4'])})"
    )
    save(
        "ipv6-quick" if args.quick else "ipv6",
        {"seconds": seconds, "ratios": ratios, "samples": samples, "kernel": os.uname().release},
    )
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
