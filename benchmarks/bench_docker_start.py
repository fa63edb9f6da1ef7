"""Docker container start on the Cilia network against `--network none`, same run.

A private dockerd (tests/runtimes/docker_fixture.py: own data and exec roots, socket,
containerd namespaces, a local busybox image) and a real agent serving Cilia's network
and IPAM driver under a per-run name. Each sample is one `containers.run(detach=True)`
through the SDK, timed until the daemon answers (the container runs; on the Cilia
network its endpoint enforces policy before its first packet, since the driver's Join
is synchronous). Samples alternate between both networks; the container is removed
(untimed) between samples. There is no target: the issue asks for the ratio.

Usage: python -m benchmarks.bench_docker_start [--quick]   (root)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import docker.types
from benchmarks.common import agent, log, median, p95, save, timed
from tests.runtimes.docker_fixture import DockerDaemon


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 samples each instead of 25")
    args = ap.parse_args()
    rounds = 8 if args.quick else 25
    if os.geteuid() != 0:
        log("needs root")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="cilia-bench-docker-"))
    daemon = DockerDaemon(tmp / "dockerd", live_restore=False)
    name = f"cb{secrets.token_hex(3)}"
    samples: dict[str, list[float]] = {"cilia": [], "none": []}
    try:
        daemon.start()
        daemon.import_image()
        env = {
            "CILIA_CONTAINER_RUNTIME": '["docker"]',
            "CILIA_CONTAINER_RUNTIME_ENDPOINT": json.dumps({"docker": str(daemon.socket)}),
            "CILIA_DOCKER_PLUGIN_NAME": name,
        }
        with agent(env), daemon.client() as client:
            client.networks.create(name, driver=name, ipam=docker.types.IPAMConfig(driver=name))
            for i in range(rounds):
                order = ("cilia", "none") if i % 2 == 0 else ("none", "cilia")
                for which in order:
                    network = name if which == "cilia" else "none"
                    secs, container = timed(
                        lambda n=network: client.containers.run(
                            daemon.image,
                            ["sleep", "300"],
                            network=n,
                            labels={"app": "bench"},
                            detach=True,
                        )
                    )
                    samples[which].append(secs)
                    container.remove(force=True)
            daemon.clean()
    finally:
        try:
            if daemon.proc is not None:
                daemon.clean()
        finally:
            daemon.stop()
            daemon.unmount()
            shutil.rmtree(tmp, ignore_errors=True)
    med = {k: median(v) for k, v in samples.items()}
    ratio = med["cilia"] / med["none"]
    print(
        f"docker run to running ({rounds} each): Cilia network median "
        f"{med['cilia'] * 1000:.1f} ms (p95 {p95(samples['cilia']) * 1000:.1f}), "
        f"--network none {med['none'] * 1000:.1f} ms (p95 {p95(samples['none']) * 1000:.1f}), "
        f"ratio {ratio:.2f} (reported, no target)"
    )
    save("docker-start", {"kernel": os.uname().release, **samples})
    return 0


if __name__ == "__main__":
    sys.exit(main())
