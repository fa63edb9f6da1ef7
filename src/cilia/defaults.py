"""Default paths the CLI needs before (or without) the agent's configuration.

Kept free of heavy imports (no pydantic, not even pathlib): every `cilia` command
reads these, and importing cilia.agent.config alone costs more than a whole
request to the agent.
"""

from __future__ import annotations

import os

RUN_DIR = "/var/run/cilia"
"""Default of the agent's run_dir (CILIA_RUN_DIR): socket, pid file and log."""
SOCKET_NAME = "cilia.sock"
"""The REST API's unix socket, inside run_dir."""
CLUSTER_DIR = "/var/run/cilia-cluster"
"""Default directory of the cluster on this machine (CILIA_CLUSTER_DIR)."""
CLUSTER_STATE_FILE = "cluster.json"


def socket_path() -> str:
    """The agent's API socket as CILIA_RUN_DIR sets it (what AgentConfig().socket_path gives)."""
    return os.path.join(os.environ.get("CILIA_RUN_DIR", RUN_DIR), SOCKET_NAME)


def cluster_dir() -> str:
    """The cluster directory: CILIA_CLUSTER_DIR, or /var/run/cilia-cluster."""
    return os.environ.get("CILIA_CLUSTER_DIR") or CLUSTER_DIR


def cluster_exists() -> bool:
    """Is there a cluster state file in the cluster directory?"""
    return os.path.exists(os.path.join(cluster_dir(), CLUSTER_STATE_FILE))
