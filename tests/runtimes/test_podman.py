"""Podman (Debian's 4.3, CNI network backend) through `cilia-cni`: a `podman run` on the
Cilia network gets its endpoint before podman returns, policy applies to it, and `rm`
removes it. Podman has no daemon whose events carry labels, so the container holds
the init identity until its labels are given (`PATCH /v1/endpoint`).

Podman runs with private storage, run and CNI directories; this sandbox refuses
podman's default nofile/nproc rlimits, so the test asks for lower ones.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cilia.runtime.probe import probe
from tests.integration.cni_tool import WEB
from tests.integration.harness import Cilia, running_agent
from tests.runtimes.docker_fixture import busybox_rootfs

pytestmark = pytest.mark.integration

ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]


@dataclass
class Podman:
    base: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = ["podman", "--root", str(self.base / "root"), "--runroot"]
        argv += [str(self.base / "run"), "--tmpdir", str(self.base / "tmp")]
        argv += ["--cgroup-manager", "cgroupfs", "--events-backend", "file", *args]
        env = {**os.environ, "CONTAINERS_CONF": str(self.base / "containers.conf")}
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.stderr}"
        return proc


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[tuple[Podman, Cilia]]:
    if shutil.which("podman") is None:
        pytest.skip("needs Debian's podman (scripts/install.sh)")
    base = Path(tempfile.mkdtemp(prefix="cpm-"))  # podman wants a runroot under 50 chars
    (base / "containers.conf").write_text(
        "[network]\n"
        'network_backend = "cni"\n'
        f'cni_plugin_dirs = ["{base}/bin"]\n'
        f'network_config_dir = "{base}/net.d"\n'
    )
    (base / "rootfs.tar").write_bytes(busybox_rootfs())
    pm = Podman(base)
    with running_agent(tmp_path / "agent", CILIA_CONTAINER_RUNTIME='["none"]') as agent:
        sock = str(agent.config.socket_path)
        agent.run(
            "cni",
            "install",
            f"--conf-dir={base}/net.d",
            f"--bin-dir={base}/bin",
            f"--agent-socket={sock}",
        )
        try:
            pm.run("import", str(base / "rootfs.tar"), "localhost/cilia-busybox:1")
            yield pm, agent
        finally:
            subprocess.run(
                [
                    "podman",
                    "--root",
                    str(base / "root"),
                    "--runroot",
                    str(base / "run"),
                    "rm",
                    "-a",
                    "-f",
                    "-t",
                    "0",
                ],
                env={**os.environ, "CONTAINERS_CONF": str(base / "containers.conf")},
                capture_output=True,
                timeout=120,
            )
            subprocess.run(["umount", "-R", str(base / "root")], capture_output=True)
            shutil.rmtree(base, ignore_errors=True)


def test_podman_run_on_the_cilia_network(podman: tuple[Podman, Cilia]) -> None:
    pm, agent = podman
    agent.apply(WEB)
    web = agent.client.request("GET", "/endpoint/default/web")["ipv4"]
    name = f"pw-{secrets.token_hex(3)}"
    cid = pm.run(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "cilia",
        *ULIMITS,
        "localhost/cilia-busybox:1",
        "sleep",
        "600",
    ).stdout.strip()
    key = f"/endpoint/container-id:{cid}"
    ep = agent.client.request("GET", key)  # there as soon as podman returned
    assert ep["identity"] == 5 and ep["pod"].endswith(f"/{name}") and ep["state"] == "ready"
    netns = ep["netns"]

    def reaches() -> bool:
        return asyncio.run(probe(netns, web, 80, "TCP", 0.6)).result == "allowed"

    assert not reaches()
    agent.client.request("PATCH", key, json={"labels": ["container:app=client"]})
    assert reaches()
    pm.run("rm", "-f", "-t", "0", name)
    assert cid not in {e["container-id"] for e in agent.client.request("GET", "/endpoint")}
    assert not Path(f"/sys/class/net/{ep['interface']}").exists()
