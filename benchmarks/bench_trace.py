"""Cost of monitoring on throughput: iperf3 TCP between two pods (allowing policy).

  none:      no `cilia monitor` client at all, trace notifications off
  trace-off: a `cilia monitor` client attached (all event types), tracing off
             (target: ratio to `none` >= 0.98)
  trace-on:  tracing switched on for both endpoints of the flow, the client
             receiving every trace event (ratio reported)

Configurations alternate inside every round and the order rotates, so drift of
the shared machine affects them alike; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from benchmarks.common import Cilia, agent, log, median, save, verdict
from benchmarks.throughput import MANIFEST, NS, PORT

CONFIGS = ("none", "trace-off", "trace-on")


def iperf(c: Cilia, server_ip: str, seconds: int) -> float:
    """Gbit/s received in one iperf3 run from the client pod."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cilia.cli.main",
            "exec",
            f"{NS}/client",
            "--",
            "iperf3",
            "-c",
            server_ip,
            "-p",
            str(PORT),
            "-t",
            str(seconds),
            "-J",
        ],
        env=c.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def monitor_client(c: Cilia) -> subprocess.Popen[bytes]:
    """A `cilia monitor -o json` client whose output is discarded."""
    before = c.client.get("/status")["monitor"]["subscribers"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cilia.cli.main", "monitor", "-o", "json"],
        env=c.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while c.client.get("/status")["monitor"]["subscribers"] <= before:
        time.sleep(0.05)
    return proc


def run(c: Cilia, config: str, server_ip: str, seconds: int) -> tuple[float, int]:
    """(Gbit/s, trace events delivered) of one configuration."""
    proc = monitor_client(c) if config != "none" else None
    if config == "trace-on":
        for pod in ("server", "client"):
            c.run("endpoint", "config", f"{NS}/{pod}", "TraceNotification=true")
    start = c.client.get("/status")["monitor"]["datapath-events"]
    try:
        gbps = iperf(c, server_ip, seconds)
    finally:
        if config == "trace-on":
            for pod in ("server", "client"):
                c.run("endpoint", "config", f"{NS}/{pod}", "TraceNotification=false")
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    return gbps, c.client.get("/status")["monitor"]["datapath-events"] - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="3 rounds of 2 s instead of 7 of 4 s")
    args = ap.parse_args()
    rounds, seconds = (3, 2) if args.quick else (7, 4)
    samples: dict[str, list[float]] = {k: [] for k in CONFIGS}
    events: dict[str, list[int]] = {k: [] for k in CONFIGS}
    with agent() as c:
        c.apply(MANIFEST)
        server_ip = c.client.get(f"/endpoint/{NS}/server")["ipv4"]
        iperf(c, server_ip, 1)  # warm-up
        for r in range(rounds):
            order = CONFIGS[r % 3 :] + CONFIGS[: r % 3]
            for config in order:
                gbps, n = run(c, config, server_ip, seconds)
                samples[config].append(gbps)
                events[config].append(n)
            log(f"round {r}: " + ", ".join(f"{k} {samples[k][-1]:.2f}" for k in CONFIGS))
    med = {k: median(v) for k, v in samples.items()}
    off, on = med["trace-off"] / med["none"], med["trace-on"] / med["none"]
    save("trace", {"gbps": samples, "events": events, "ratio_off": off, "ratio_on": on})
    print("Throughput with monitoring (iperf3 TCP, pod to pod, median Gbit/s):")
    print(
        f"  no monitor {med['none']:.2f}, monitor attached + tracing off "
        f"{med['trace-off']:.2f}, tracing on {med['trace-on']:.2f}"
    )
    print(f"  tracing off / no monitor = {off:.3f}  (target >= 0.98: {verdict(off >= 0.98)})")
    print(
        f"  tracing on / no monitor  = {on:.3f}  (reported; "
        f"{median([float(x) for x in events['trace-on']]):.0f} events per run)"
    )


if __name__ == "__main__":
    main()
