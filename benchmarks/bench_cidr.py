"""CIDR policy throughput: 1 against 50,000 enforced CIDR prefixes of 30 distinct lengths.

A pod sends iperf3 TCP to an "outside" namespace routed through the host; its
egress policy allows the outside by CIDR. Configuration A enforces only that
prefix; configuration B adds 49,999 more prefixes of lengths /2../31 (every one
a CIDR identity in the LPM ipcache and an allowance of the pod). The two
alternate round by round; the target is the ratio B/A within 3% (LPM lookups do
not depend on the number of prefixes or of distinct lengths).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Cilia, agent, log, median, save, timed, verdict

from cilia.datapath.external import Outside
from cilia.runtime.processes import start_process, stop_process, wait_listening

PORT = 5201
SETTLE = 2.0  # seconds after an import before measuring
LENGTHS = range(2, 32)  # 30 distinct prefix lengths
POD = """
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {containers: [{name: idle}]}
"""


def prefixes(count: int, avoid: list[ipaddress.IPv4Network], seed: int = 7) -> list[str]:
    """`count` distinct prefixes spread over LENGTHS, none overlapping `avoid`."""
    rng = random.Random(seed)
    out: set[str] = set()
    per_length = {n: min(2**n // 4, count // len(LENGTHS)) for n in LENGTHS}
    per_length[31] += count - sum(per_length.values())
    for length, wanted in per_length.items():
        found = 0
        while found < wanted:
            net = ipaddress.IPv4Network((rng.getrandbits(32), length), strict=False)
            if any(net.overlaps(a) for a in avoid) or str(net) in out:
                continue
            out.add(str(net))
            found += 1
    return sorted(out)


def policy(cidrs: list[str], label: str) -> list[dict[str, object]]:
    return [
        {
            "endpointSelector": {"matchLabels": {"app": "client"}},
            "egress": [
                {"toCIDR": cidrs, "toPorts": [{"ports": [{"port": str(PORT), "protocol": "TCP"}]}]}
            ],
            "labels": [f"unspec:bench={label}"],
        }
    ]


def iperf(cilia: Cilia, server: str, seconds: int) -> float:
    res = cilia.run(
        "exec",
        "default/client",
        "--",
        "iperf3",
        "-c",
        server,
        "-p",
        str(PORT),
        "-t",
        str(seconds),
        "-J",
    )
    return float(json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--prefixes", type=int, default=50_000)
    args = parser.parse_args()
    # No periodic map verification during the runs: with 50,000 prefixes it would
    # compete with iperf3 for the CPU, which is not what this measures.
    with agent({"CILIA_SYNC_INTERVAL": "3600"}) as cilia:
        n = int(cilia.tag[:2], 16)
        out = Outside(
            f"{cilia.config.name_prefix}-out", f"cb{cilia.tag}", f"198.18.{n}.1", f"198.18.{n}.2"
        )
        tmp = Path(tempfile.mkdtemp(prefix="cilia-bench-cidr-"))
        out.create()
        server = start_process(out.path, ["iperf3", "-s", "-p", str(PORT)], tmp / "iperf.log")
        try:
            assert wait_listening(out.path, tcp=[PORT], timeout=10)
            cilia.apply(POD)
            own = f"198.18.{n}.0/30"
            avoid = [ipaddress.IPv4Network(own), ipaddress.IPv4Network(cilia.config.pod_cidr)]
            many = prefixes(args.prefixes - 1, avoid)
            files = {}
            for name, cidrs in (("one", [own]), ("many", [own, *many])):
                files[name] = tmp / f"{name}.json"
                files[name].write_text(json.dumps(policy(cidrs, name)))
            results: dict[str, list[float]] = {"one": [], "many": []}
            switch_s: list[float] = []
            for r in range(args.rounds):
                for name in ("one", "many") if r % 2 == 0 else ("many", "one"):
                    cilia.run("policy", "delete", "--all")
                    seconds, _ = timed(lambda n=name: cilia.run("policy", "import", str(files[n])))
                    if name == "many":
                        switch_s.append(seconds)
                    ids = cilia.client.request("GET", "/identity")
                    log(f"round {r} {name}: {len(ids)} identities, import {seconds:.1f}s")
                    time.sleep(SETTLE)
                    results[name].append(iperf(cilia, out.outside_ip, args.seconds))
                    log(f"  {results[name][-1]:.2f} Gbit/s")
        finally:
            stop_process(server)
            out.remove()
            shutil.rmtree(tmp, ignore_errors=True)
    one, big = median(results["one"]), median(results["many"])
    ratio = big / one
    ok = abs(1 - ratio) <= 0.03
    print(f"CIDR policy throughput (iperf3 TCP pod -> outside, {args.rounds} rounds alternating)")
    print(f"  1 prefix:                         {one:.2f} Gbit/s")
    print(f"  {args.prefixes:,} prefixes, 30 lengths:   {big:.2f} Gbit/s")
    print(f"  ratio {ratio:.3f}   target within 3%   {verdict(ok)}")
    print(f"  (importing the {args.prefixes:,}-prefix rule took {median(switch_s):.1f} s)")
    save("cidr", {"one": results["one"], "many": results["many"], "import_s": switch_s})
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
