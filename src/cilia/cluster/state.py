"""The cluster state file: what `cilia cluster up` built, so status, down and `--node` find it.

It is written before anything is created and again after each step, so `down`
always knows the names of everything that may exist (the names themselves all
derive from the cluster's prefix, which is how leftovers are also found).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from cilia.agent.config import AgentConfig
from cilia.defaults import CLUSTER_STATE_FILE as STATE_FILE

UNDERLAY_DEVICE = "ul0"
"""Name of each node's underlay device, inside its namespace."""


class ClusterError(RuntimeError):
    """A cluster operation failed; the message says why."""


class EtcdState(BaseModel):
    """The cluster's etcd: ours (started by `up`, data under `directory`) or external."""

    external: bool
    endpoints: list[str]
    """URLs the host uses."""
    node_endpoints: list[str]
    """URLs the agents are given (reachable from the underlay)."""
    directory: str | None = None
    client_port: int | None = None
    peer_port: int | None = None
    hosts: list[str] = []
    pid: int | None = None


class NodeState(BaseModel):
    """One node: its namespace, underlay link and agent."""

    name: str
    netns: str
    underlay_device: str
    underlay_ip: str
    host_device: str
    """The host end of the node's underlay veth (a port of the bridge)."""
    env: dict[str, str]
    """The agent's CILIA_* settings: run, state, bpffs and cache directories, name prefix."""
    agent_argv: list[str] = []
    agent_pid: int | None = None
    agent_start_time: int | None = None
    """Kernel start time of the agent (clock ticks), so a reused PID is never taken for it."""

    @property
    def config(self) -> AgentConfig:
        """The agent's configuration as far as its environment sets it (paths and names)."""
        return AgentConfig.model_validate(
            {k.removeprefix("CILIA_").lower(): v for k, v in self.env.items()}
        )

    @property
    def bpf_dir(self) -> Path:
        return Path(self.env["CILIA_BPF_DIR"])


class ClusterState(BaseModel):
    """Everything `cilia cluster up` created, or was about to create."""

    version: Literal[1] = 1
    tag: str
    prefix: str
    """Every namespace, pin directory and process environment of the cluster starts with it."""
    device_prefix: str
    """Every host device of the cluster starts with it (device names end at 15 characters)."""
    directory: str
    bridge: str = ""
    underlay_cidr: str = ""
    bridge_ip: str = ""
    cluster_pod_cidr: str = ""
    etcd: EtcdState | None = None
    nodes: list[NodeState] = []

    @property
    def path(self) -> Path:
        return Path(self.directory) / STATE_FILE

    def node(self, name: str) -> NodeState:
        """The node called `name`; ClusterError naming the nodes if there is none."""
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes) or "none"
        raise ClusterError(f"unknown node {name!r}; the cluster's nodes: {known}")

    def save(self) -> None:
        """Write the state file atomically (never half-written, even if we are killed)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n")
        tmp.replace(self.path)


def load_state(directory: Path) -> ClusterState | None:
    """The state of the cluster in `directory`, or None if there is none."""
    try:
        text = (directory / STATE_FILE).read_text()
    except FileNotFoundError:
        return None
    try:
        return ClusterState.model_validate_json(text)
    except ValueError as exc:
        raise ClusterError(f"{directory / STATE_FILE} is not a cluster state file: {exc}") from exc
