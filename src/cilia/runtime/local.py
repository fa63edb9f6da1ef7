"""The embedded local-pod runtime: a pod's network namespace and its processes.

Its pods reach the agent's endpoints through the same endpoint calls as the CNI
plugin: this module makes the namespace and runs the processes; the endpoint (veth,
address, identity, policy) is the agent's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cilia.datapath.netns import create_netns, delete_netns, netns_exists, resolve_netns
from cilia.runtime.processes import ProcessRecord, start_process, stop_process, wait_listening

log = logging.getLogger("cilia.agent")

READY_TIMEOUT = 5.0


@dataclass(frozen=True)
class ContainerSpec:
    """What the runtime needs of one container."""

    name: str
    argv: list[str]
    tcp_ports: list[int]
    udp_ports: list[int]


def responder_argv(pod: str, tcp: list[int], udp: list[int]) -> list[str]:
    """Command line of the built-in responder for a container with ports and no command."""
    argv = [sys.executable, "-m", "cilia.runtime.responder", "--pod", pod]
    for p in tcp:
        argv += ["--tcp", str(p)]
    for p in udp:
        argv += ["--udp", str(p)]
    return argv


def create_sandbox(netns: str) -> str:
    """Create (or reuse) the pod's named network namespace; returns its path."""
    if not netns_exists(netns):
        create_netns(netns)
    return resolve_netns(netns)


def start_containers(
    netns: str, containers: list[ContainerSpec], log_dir: Path
) -> list[ProcessRecord]:
    """Start every container's process inside the pod; stops them all if one fails."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started: list[ProcessRecord] = []
    try:
        for c in containers:
            if c.argv:
                log_file = log_dir / f"{c.name}.log"
                started.append(start_process(resolve_netns(netns), c.argv, log_file))
    except BaseException:
        for rec in started:
            stop_process(rec)
        raise
    return started


def wait_ready(netns: str, containers: list[ContainerSpec]) -> bool:
    """Wait until every declared port listens in the pod; True when ready."""
    return wait_listening(
        resolve_netns(netns),
        tcp=[p for c in containers for p in c.tcp_ports],
        udp=[p for c in containers for p in c.udp_ports],
        timeout=READY_TIMEOUT,
    )


def remove_sandbox(netns: str, processes: list[ProcessRecord]) -> None:
    """Stop the pod's processes and delete its namespace (idempotent)."""
    for rec in processes:
        stop_process(rec)
    kill_netns_processes(netns)
    delete_netns(netns)


def kill_netns_processes(netns: str) -> int:
    """Kill every process living in a pod namespace (even ones the agent lost track of)."""
    try:
        target = os.stat(resolve_netns(netns)).st_ino
    except FileNotFoundError:
        return 0
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                os.kill(int(entry), 9)
                killed += 1
    return killed
