"""`--container-runtime`: a runtime named explicitly is followed (and reported) even
while it does not answer; `auto` keeps only those that answer; `none` follows none."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from cilia.agent.config import AgentConfig
from cilia.agent.runtimes import selected
from tests.integration.harness import running_agent

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]


def test_explicit_runtime_is_reported_unhealthy_until_it_answers(tmp_path: Path) -> None:
    plugin = f"cilia-sel-{secrets.token_hex(3)}"
    env = {
        "CILIA_CONTAINER_RUNTIME": '["docker"]',
        "CILIA_CONTAINER_RUNTIME_ENDPOINT": json.dumps({"docker": str(tmp_path / "no.sock")}),
        "CILIA_DOCKER_PLUGIN_NAME": plugin,
        "CILIA_DOCKER_PLUGIN_DIR": str(tmp_path / "plugins"),
    }
    with running_agent(tmp_path / "agent", **env) as agent:
        lines = {
            r["runtime"]: r for r in agent.client.request("GET", "/status")["container-runtimes"]
        }
        assert set(lines) == {"docker", "docker-plugin"}
        assert not lines["docker"]["healthy"] and lines["docker"]["endpoint"].endswith("no.sock")
        assert lines["docker-plugin"]["healthy"]
        assert (tmp_path / "plugins" / f"{plugin}.sock").exists()
        text = agent.run("status").stdout
        assert "ContainerRuntime:   docker: Unhealthy" in text
    assert not (tmp_path / "plugins" / f"{plugin}.sock").exists(), "the agent removes its socket"


def test_auto_keeps_only_runtimes_that_answer(tmp_path: Path) -> None:
    missing = {r: str(tmp_path / f"{r}.sock") for r in ("docker", "containerd", "crio")}
    config = AgentConfig(container_runtime=["auto"], container_runtime_endpoint=missing)
    assert selected(config) == []
    assert selected(AgentConfig(container_runtime=["none"])) == []
    both = AgentConfig(container_runtime=["containerd,docker"], container_runtime_endpoint=missing)
    assert [r for r, _ in selected(both)] == ["containerd", "docker"]
    with pytest.raises(ValueError, match="unknown runtime"):
        AgentConfig(container_runtime=["podman"])
    with pytest.raises(ValueError, match="cannot be combined"):
        AgentConfig(container_runtime=["none", "docker"])
