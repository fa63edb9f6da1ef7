"""Run `cilia-cni` as a container runtime does, on namespaces a test makes."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.datapath.netns import create_netns, delete_netns, netns_path

PLUGIN = str(Path(sys.executable).parent / "cilia-cni")

WEB = """
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  containers: [{name: srv, ports: [{containerPort: 80}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: clients-to-web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {"container:app": client}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""
"""A local pod `web` that only containers labelled `container:app=client` may reach on
port 80 (a `container:` selector is not confined to the policy's namespace)."""


def plugin_conf(agent_socket: Path, version: str = "1.1.0") -> dict[str, Any]:
    """The plugin's network configuration, as a runtime passes it on stdin."""
    return {
        "cniVersion": version,
        "name": "cilia",
        "type": "cilia-cni",
        "agent-socket": str(agent_socket),
    }


def sandbox(made: list[str]) -> str:
    name = f"cnitest-{secrets.token_hex(3)}"
    create_netns(name)
    made.append(name)
    return netns_path(name)


def cni(command: str, conf: Any, cid: str = "", netns: str = "", **env: str) -> tuple[int, Any]:
    """Run the plugin as a runtime does; (exit code, decoded stdout or None)."""
    full = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(Path(PLUGIN).parent),
        **env,
    }
    stdin = conf if isinstance(conf, str) else json.dumps(conf)
    proc = subprocess.run(
        [PLUGIN], input=stdin, env=full, capture_output=True, text=True, timeout=120
    )
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


@pytest.fixture
def sandboxes() -> Iterator[list[str]]:
    """Namespaces standing for containers (see `sandbox`); all removed at the end."""
    made: list[str] = []
    yield made
    for name in made:
        delete_netns(name)
