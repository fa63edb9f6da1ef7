"""`cilia` command latency: the CLI's start-up plus one request, against a bare interpreter.

A real agent (no pods). Each sample is one process run to its exit, output
discarded: the console script `cilia status` (the target), `cilia endpoint list`,
`cilia get pods` and `cilia --help` (reported), and `python -c pass` (the
baseline), alternated round by round in the same run. Every sample of a command
must exit 0.

Usage: python -m benchmarks.bench_cli [--quick]   (root: it starts an agent)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import agent, log, median, p95, save, timed, verdict

TARGET_MS = 100.0
CILIA = str(Path(sys.executable).with_name("cilia"))
COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "cilia status": [CILIA, "status"],
    "cilia endpoint list": [CILIA, "endpoint", "list"],
    "cilia get pods": [CILIA, "get", "pods"],
    "cilia --help": [CILIA, "--help"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 samples each instead of 40")
    args = ap.parse_args()
    rounds = 10 if args.quick else 40
    if os.geteuid() != 0:
        log("needs root")
        return 2
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with agent() as cilia:
        names = list(COMMANDS)
        for i in range(rounds):
            for name in names if i % 2 == 0 else reversed(names):
                secs, proc = timed(
                    lambda a=COMMANDS[name]: subprocess.run(
                        a, env=cilia.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                    )
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"{name} exited {proc.returncode}: {proc.stderr.decode()}")
                samples[name].append(secs)
    base = median(samples["python -c pass"])
    for name, xs in samples.items():
        print(
            f"{name:<22} median {median(xs) * 1000:6.1f} ms (p95 {p95(xs) * 1000:6.1f}), "
            f"{median(xs) / base:5.1f}x python -c pass"
        )
    status = median(samples["cilia status"]) * 1000
    ok = status < TARGET_MS
    print(
        f"cilia status ({rounds} runs): median {status:.1f} ms, ratio to python -c pass "
        f"{status / (base * 1000):.1f} (target < {TARGET_MS:.0f} ms) {verdict(ok)}"
    )
    save("cli", {"kernel": os.uname().release, **samples})
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
