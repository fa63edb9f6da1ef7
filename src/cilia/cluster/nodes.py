"""The nodes of a cluster on one machine: each an unmodified agent in its own namespace.

The agent gets everything through flags and CILIA_* variables, exactly as in
production; only here is it decided that its "machine" is a network namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from cilia.agent.cleanup import remove_everything
from cilia.cli.client import ApiError, Client
from cilia.cluster.etcd import health_error
from cilia.cluster.state import UNDERLAY_DEVICE, ClusterError, NodeState
from cilia.datapath.netns import create_netns, delete_netns, netns_exists, netns_path, setns
from cilia.runtime.local import kill_netns_processes
from cilia.runtime.processes import ProcessRecord, process_alive, start_process, stop_process

PREFIX_VARIABLE = "CILIA_NAME_PREFIX"
"""Every process of a node (agent, proxies, pod processes) carries its name prefix here."""
CLI_VARIABLES = {"CILIA_NODE", "CILIA_CLUSTER_DIR"}
"""Settings of the `cilia` command itself, never handed to an agent."""


def plan_node(
    directory: Path, prefix: str, device_prefix: str, index: int, subnet: ipaddress.IPv4Network
) -> NodeState:
    """Names, addresses and agent environment of node `index` (1-based); nothing is created.

    The agent's environment is the caller's CILIA_* settings (e.g. CILIA_SYNC_INTERVAL)
    with the node's own directories and name prefix."""
    name = f"node{index}"
    base = directory / name
    inherited = {
        k: v for k, v in os.environ.items() if k.startswith("CILIA_") and k not in CLI_VARIABLES
    }
    return NodeState(
        name=name,
        netns=f"{prefix}-{name}",
        underlay_device=UNDERLAY_DEVICE,
        underlay_ip=str(subnet[1 + index]),
        host_device=f"{device_prefix}n{index}",
        env=inherited
        | {
            "CILIA_RUN_DIR": str(base / "run"),
            "CILIA_STATE_DIR": str(base / "state"),
            "CILIA_BPF_DIR": f"/sys/fs/bpf/{prefix}-{name}",
            "CILIA_CACHE_DIR": str(directory / "cache"),
            PREFIX_VARIABLE: f"{prefix}-{name}",
        },
    )


def process_env(settings: dict[str, str]) -> dict[str, str]:
    """Environment of a process the cluster starts: ours without CILIA_*, plus `settings`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CILIA_")} | settings


def agent_argv(node: NodeState, etcd_endpoints: Sequence[str], flags: Sequence[str]) -> list[str]:
    """The agent command line of a node: cluster mode on the given etcd, plus `flags`."""
    return [
        sys.executable,
        "-m",
        "cilia.cli.main",
        "agent",
        "--kvstore",
        "etcd",
        "--kvstore-opt",
        f"etcd.address={','.join(etcd_endpoints)}",
        "--node-name",
        node.name,
        "--underlay-device",
        node.underlay_device,
        *flags,
    ]


def start_agent(node: NodeState) -> None:
    """Start the node's agent in its namespace (new session, log and pid file in its run
    directory); records its PID and start time in `node`."""
    config = node.config
    config.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = process_env(node.env)
    rec = start_process(netns_path(node.netns), node.agent_argv, config.log_file, env=env)
    config.pid_file.write_text(f"{rec.pid}\n")
    node.agent_pid, node.agent_start_time = rec.pid, rec.start_time


def agent_record(node: NodeState) -> ProcessRecord | None:
    """The node's agent process as recorded, or None if it was never started."""
    if node.agent_pid is None or node.agent_start_time is None:
        return None
    return ProcessRecord(node.agent_pid, node.agent_start_time, tuple(node.agent_argv))


def agent_alive(node: NodeState) -> bool:
    """Is the recorded agent process (same PID and start time) running?"""
    rec = agent_record(node)
    return rec is not None and process_alive(rec)


def agent_client(node: NodeState, timeout: float = 5.0) -> Client:
    """API client of the node's agent."""
    return Client(node.config.socket_path, timeout=timeout)


def _log_tail(node: NodeState, lines: int = 5) -> str:
    try:
        text = node.config.log_file.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_healthy(nodes: Sequence[NodeState], timeout: float, report: Callable[[str], None]) -> None:
    """Wait until every agent answers /v1/healthz, reporting each; ClusterError (with the
    end of its log) when one exits or the time is up."""
    started = time.monotonic()
    clients = {node.name: agent_client(node, timeout=1.0) for node in nodes}
    waiting = list(nodes)
    while waiting:
        for node in list(waiting):
            if clients[node.name].healthy():
                waiting.remove(node)
                report(
                    f"{node.name}: agent healthy (pid {node.agent_pid}, "
                    f"{time.monotonic() - started:.1f}s)"
                )
            elif not agent_alive(node):
                raise ClusterError(
                    f"{node.name}: agent exited; end of {node.config.log_file}:\n" + _log_tail(node)
                )
        if waiting and time.monotonic() - started > timeout:
            names = ", ".join(n.name for n in waiting)
            raise ClusterError(f"agents of {names} not healthy after {timeout:g}s")
        if waiting:
            time.sleep(0.1)


def reach_from_node(node: NodeState, urls: Sequence[str]) -> None:
    """ClusterError unless one of the etcd `urls` answers from inside the node's namespace."""
    errors = []
    with setns(netns_path(node.netns)):  # the client's sockets are made in there
        for url in urls:
            error = health_error(url, timeout=2.0)
            if error is None:
                return
            errors.append(f"{url}: {error}")
    raise ClusterError(
        f"etcd is not reachable from {node.name} ({node.netns}): {'; '.join(errors)}"
    )


def stop_agents(nodes: Sequence[NodeState], timeout: float = 5.0) -> list[str]:
    """Stop the recorded agents (SIGTERM, SIGKILL after `timeout`), all at once."""
    records = {n.name: rec for n in nodes if (rec := agent_record(n)) and process_alive(rec)}
    with ThreadPoolExecutor(max_workers=max(1, len(records))) as pool:
        list(pool.map(lambda rec: stop_process(rec, timeout), records.values()))
    return [f"agent of {name} (pid {rec.pid})" for name, rec in records.items()]


def clean_node(node: NodeState) -> list[str]:
    """`cilia down` of the node's agent, run inside the node's namespace with its config
    (pods, devices, pins, proxies, state), then the namespace itself."""
    existed = netns_exists(node.netns)
    if not existed:  # an empty stand-in: the cleanup must never touch the host namespace
        create_netns(node.netns)
    with setns(netns_path(node.netns)):
        removed = remove_everything(node.config)
    kill_netns_processes(node.netns)
    delete_netns(node.netns)
    if existed:
        removed.append(f"netns {node.netns}")
    return [f"{node.name}: {line}" for line in removed]


def cluster_processes(prefix: str) -> list[int]:
    """PIDs of the processes of the cluster with `prefix` (any of its nodes or its etcd),
    found by the name prefix in their environment."""
    marker = f"{PREFIX_VARIABLE}={prefix}-".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            if environ.startswith(marker) or b"\0" + marker in environ:
                found.append(int(entry))
    return found


def kill_processes(pids: Sequence[int]) -> None:
    """SIGKILL each PID (gone already is fine)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def agent_status(node: NodeState) -> dict[str, Any]:
    """The agent's /v1/status, or {"error": why} when it does not answer."""
    try:
        return dict(agent_client(node).get("/status"))
    except (ApiError, httpx.HTTPError) as exc:
        return {"error": str(exc) or type(exc).__name__}
