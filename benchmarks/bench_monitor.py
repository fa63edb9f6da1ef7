"""Monitor: drop events per second delivered to one `cilia monitor -o json -t drop`
client, for floods of denied UDP packets at increasing paced rates; lost versus
delivered for each (loss in the kernel ring buffer and in the client's queue).

The sender is a separate process inside the source pod; the client's output
is counted line by line by this process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from typing import Any

from benchmarks.common import agent, log, save

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: target, namespace: default, labels: {app: target}}
spec: {containers: [{name: s, ports: [{containerPort: 80, protocol: UDP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: flooder, namespace: default, labels: {app: flooder}}
spec: {containers: [{name: idle}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-all-in, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: target}}
  ingress: [{fromEndpoints: [{matchLabels: {app: nobody}}]}]
"""

SENDER = """
import socket, sys, time
dst, rate, total = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
burst = max(1, int(rate / 1000)) if rate else 1000
start = time.perf_counter()
sent = 0
while sent < total:
    for _ in range(min(burst, total - sent)):
        s.sendto(b"x", (dst, 9))
    sent += min(burst, total - sent)
    if rate:
        delay = start + sent / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
print(sent / (time.perf_counter() - start))
"""


class Client:
    """One `cilia monitor -o json -t drop` whose lines are counted."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cilia.cli.main", "monitor", "-o", "json", "-t", "drop"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.drops = 0
        self.lost = 0
        self.first = self.last = 0.0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ev = json.loads(line)
            if ev["type"] == "lost":
                self.lost += ev["count"]
            elif ev.get("reason") == 133:
                self.drops += 1
                self.last = time.monotonic()
                self.first = self.first or self.last

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer packets per rate")
    args = ap.parse_args()
    total = 50_000 if args.quick else 200_000
    rates = [10_000, 25_000, 50_000, 100_000, 0]  # 0: as fast as the sender goes
    results: list[dict[str, Any]] = []
    with agent() as c:
        c.apply(PODS)
        target = c.client.get("/endpoint/default/target")["ipv4"]
        for rate in rates:
            client = Client(c.env)
            while c.client.get("/status")["monitor"]["subscribers"] < 1:
                time.sleep(0.05)
            before = c.client.get("/status")["monitor"]
            sender = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cilia.cli.main",
                    "exec",
                    "default/flooder",
                    "--",
                    "python3",
                    "-c",
                    SENDER,
                    target,
                    str(rate),
                    str(total),
                ],
                env=c.env,
                capture_output=True,
                text=True,
                check=True,
            )
            deadline = time.monotonic() + 60
            while client.drops + client.lost < total and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)
            after = c.client.get("/status")["monitor"]
            client.stop()
            kernel_lost = sum(after["datapath-lost"].values()) - sum(
                before["datapath-lost"].values()
            )
            span = max(client.last - client.first, 1e-6)
            row = {
                "target_rate": rate or "max",
                "sent_rate": round(float(sender.stdout.strip())),
                "sent": total,
                "delivered": client.drops,
                "lost_reported": client.lost,
                "lost_in_kernel": kernel_lost,
                "delivered_per_second": round(client.drops / span),
            }
            results.append(row)
            log(json.dumps(row))
    save("monitor", {"results": results})
    lossless = [r for r in results if r["delivered"] == r["sent"]]
    best = max(lossless, key=lambda r: r["delivered_per_second"]) if lossless else None
    print("Monitor: drop events to one `cilia monitor -o json` client")
    for r in results:
        print(
            f"  offered {r['sent_rate']:>7}/s: delivered {r['delivered']}/{r['sent']} "
            f"({r['delivered_per_second']}/s), lost {r['sent'] - r['delivered']} "
            f"(reported {r['lost_reported']}, kernel ring buffer {r['lost_in_kernel']})"
        )
    if best:
        print(f"  highest rate delivered without loss: {best['delivered_per_second']}/s")


if __name__ == "__main__":
    main()
