"""The private containerd itself: the local image runs with `ctr run` (no network)."""

from __future__ import annotations

import secrets
import subprocess

from cilia.runtime import containerd as ctd
from tests.runtimes.containerd_fixture import Containerd


def test_version_and_probe(containerd: Containerd) -> None:
    with containerd.client() as client:
        assert client.version().startswith("1.")
    assert ctd.available(containerd.socket)
    assert not ctd.available(str(containerd.base / "nothing.sock"))


def test_ctr_run_without_network(containerd: Containerd) -> None:
    cid = f"plain-{secrets.token_hex(3)}"
    argv = ["ctr", "-a", containerd.socket, "-n", containerd.namespace, "run", "--rm"]
    argv += ["--label", "app=web", containerd.image, cid, "/bin/sh", "-c", "echo hello-$((6*7))"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "hello-42" in out.stdout
    with containerd.client() as client:
        assert client.container(cid) is None  # --rm removed it
