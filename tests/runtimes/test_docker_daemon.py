"""The private dockerd of the test session runs containers of the local busybox image."""

from __future__ import annotations

import secrets

import pytest

from tests.runtimes.docker_fixture import DockerDaemon, dockerd

__all__ = ["dockerd"]

pytestmark = pytest.mark.integration


def test_run_without_network(dockerd: DockerDaemon) -> None:
    name = f"cilia-test-{secrets.token_hex(3)}"
    with dockerd.client() as client:
        out = client.containers.run(
            dockerd.image,
            ["sh", "-c", "cat /proc/net/dev; echo done"],
            name=name,
            network_mode="none",
            remove=True,
        )
        text = out.decode()
        assert text.endswith("done\n")
        devices = {line.split(":")[0].strip() for line in text.splitlines() if ":" in line}
        assert devices == {"lo"}, text
        assert name not in {c.name for c in client.containers.list(all=True)}
