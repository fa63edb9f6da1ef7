"""A cluster on this machine driven through the real `cilia cluster` command line.

`running_cluster()` brings one up in its own CILIA_CLUSTER_DIR and, at the end, runs
`cilia cluster down` and checks that nothing named after the cluster is left.
`leftovers()` looks for those names itself (never through the code under test).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cilia.cli.client import Client
from cilia.cluster.nodes import start_agent, wait_healthy
from cilia.cluster.state import ClusterState, NodeState, load_state
from tests.integration.harness import CommandResult


def cilia(env: dict[str, str], *args: str, input: str | None = None) -> CommandResult:
    """Run `cilia ARGS...` with `env`."""
    proc = subprocess.run(
        [sys.executable, "-m", "cilia.cli.main", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


def base_env(directory: Path) -> dict[str, str]:
    """The caller's environment without CILIA_* settings, pointed at the cluster `directory`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CILIA_")}
    return env | {"CILIA_CLUSTER_DIR": str(directory)}


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def kill_pid(pid: int, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
    """Send `sig` and wait until the process is gone (a zombie counts as gone)."""
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while not _dead(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive after signal {sig}"
        time.sleep(0.02)


@dataclass
class ClusterHandle:
    """One cluster: its state file, and `cilia` commands run against any of its nodes."""

    directory: Path
    state: ClusterState

    @property
    def prefix(self) -> str:
        return self.state.prefix

    @property
    def nodes(self) -> list[str]:
        """Node names, first (the CLI's default) first."""
        return [n.name for n in self.state.nodes]

    @property
    def etcd_url(self) -> str:
        """An etcd URL the host (the test) reaches."""
        assert self.state.etcd is not None
        return self.state.etcd.endpoints[0]

    @property
    def etcd_node_url(self) -> str:
        """The etcd URL the agents were given (reachable from the node namespaces)."""
        assert self.state.etcd is not None
        return self.state.etcd.node_endpoints[0]

    def node(self, name: str) -> NodeState:
        """A node's recorded state: netns, underlay address, agent pid, CILIA_* env."""
        return self.state.node(name)

    def env(self, node: str | None = None) -> dict[str, str]:
        """Environment for `cilia` commands against `node` (CILIA_NODE), or against the
        default node when None."""
        env = base_env(self.directory)
        return env if node is None else env | {"CILIA_NODE": node}

    def run(self, node: str | None, *args: str, input: str | None = None) -> CommandResult:
        """`cilia ARGS...` against `node` (None: the CLI's default, the first node)."""
        return cilia(self.env(node), *args, input=input)

    def get_nodes(self, node: str | None) -> list[dict[str, Any]]:
        """`cilia get nodes -o json` against `node`, each Kubernetes Node as the row of
        GET /v1/cluster/nodes it shows: name, underlay-ip (InternalIP), pod-cidr
        (spec.podCIDR), health (`ok` while Ready)."""
        res = self.run(node, "get", "nodes", "-o", "json")
        assert res.code == 0, res.stderr
        return [node_row(item) for item in res.json()["items"]]

    def cluster(self, *args: str) -> CommandResult:
        """`cilia cluster ARGS...` for this cluster."""
        return cilia(self.env(), "cluster", *args)

    def client(self, node: str) -> Client:
        """API client of a node's agent."""
        return Client(self.node(node).config.socket_path)

    def reload(self) -> None:
        """Re-read the state file (after `cilia cluster` changed it)."""
        state = load_state(self.directory)
        assert state is not None, f"no cluster state in {self.directory}"
        self.state = state

    def kill_agent(self, node: str, sig: int = signal.SIGKILL) -> None:
        """Signal a node's agent and wait until it is gone; pods and pins stay."""
        pid = self.node(node).agent_pid
        assert pid is not None
        kill_pid(pid, sig)

    def restart_agent(self, node: str, timeout: float = 60.0) -> None:
        """Start a node's agent again, same flags and environment, and wait for health."""
        state = self.node(node)
        start_agent(state)
        self.state.save()
        wait_healthy([state], timeout, lambda _line: None)

    def save_logs(self, into: Path) -> None:
        """Copy the agents' and etcd's logs (`down` deletes them with the directory)."""
        into.mkdir(parents=True, exist_ok=True)
        for log in [*self.directory.glob("*/run/cilia.log"), self.directory / "etcd/etcd.log"]:
            if log.exists():
                shutil.copy(log, into / f"{log.parts[-3]}-{log.name}")


def node_row(item: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes Node of `cilia get nodes -o json` as a GET /v1/cluster/nodes row."""
    assert item["kind"] == "Node", item
    status = item["status"]
    addresses = {a["type"]: a["address"] for a in status["addresses"]}
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    return {
        "name": item["metadata"]["name"],
        "underlay-ip": addresses.get("InternalIP"),
        "pod-cidr": item["spec"].get("podCIDR"),
        "ipv6-cidr": next((c for c in item["spec"].get("podCIDRs", []) if ":" in c), ""),
        "health": "ok" if ready["status"] == "True" else "stale",
    }


def leftovers(prefix: str, device_prefix: str, directory: Path) -> list[str]:
    """Everything named after the cluster: namespaces, host devices, pins, processes (by
    their name-prefix variable or a command line naming the cluster directory), the
    directory itself."""
    left = [f"netns {n}" for n in _names("/run/netns") if n.startswith(prefix)]
    left += [f"device {d}" for d in _names("/sys/class/net") if d.startswith(device_prefix)]
    left += [f"pins {p}" for p in _names("/sys/fs/bpf") if p.startswith(prefix)]
    marker = f"CILIA_NAME_PREFIX={prefix}-".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        named = environ.startswith(marker) or b"\0" + marker in environ
        if named or (str(directory).encode() in cmdline and int(pid) != os.getpid()):
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
            left.append(f"process {pid}: {argv}")
    if directory.exists():
        left.append(f"directory {directory}")
    return left


def _names(path: str) -> list[str]:
    return os.listdir(path) if os.path.isdir(path) else []


def bring_up(directory: Path, *args: str) -> ClusterHandle:
    """`cilia cluster up ARGS...` in `directory`; AssertionError (after `down`) if it fails."""
    res = cilia(base_env(directory), "cluster", "up", *args)
    state = load_state(directory)
    if res.code != 0 or state is None:
        cilia(base_env(directory), "cluster", "down")
        raise AssertionError(f"cilia cluster up exited {res.code}: {res.stdout}{res.stderr}")
    return ClusterHandle(directory, state)


def tear_down(handle: ClusterHandle) -> None:
    """`cilia cluster down`, which must succeed and leave nothing behind."""
    res = handle.cluster("down")
    left = leftovers(handle.prefix, handle.state.device_prefix, handle.directory)
    assert res.code == 0, f"cilia cluster down exited {res.code}: {res.stdout}{res.stderr}"
    assert left == [], f"cilia cluster down left: {left}"


@contextmanager
def running_cluster(
    directory: Path, *args: str, logs: Path | None = None
) -> Iterator[ClusterHandle]:
    """A cluster brought up with `cilia cluster up ARGS...`; removed at the end, pass or
    fail, and checked to leave nothing behind (logs copied to `logs` first)."""
    handle = bring_up(directory, *args)
    try:
        yield handle
    finally:
        if logs is not None:
            handle.save_logs(logs)
        tear_down(handle)
