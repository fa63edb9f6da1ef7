"""The embedded local-pod runtime: a pod's network namespace and its processes.

Its pods reach the agent's endpoints through the same endpoint calls as the CNI
plugin: this module makes the namespace and runs the processes; the endpoint (veth,
address, identity, policy) is the agent's.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence

from cilia.datapath.netns import create_netns, delete_netns, netns_exists, resolve_netns
from cilia.k8s.manifests import Container, Pod
from cilia.runtime.supervisor import (
    ContainerSpec,
    ContainerStatus,
    Readiness,
    Responders,
    stop_containers,
)

log = logging.getLogger("cilia.agent")


def _readiness(container: Container) -> Readiness | None:
    probe = container.readinessProbe
    if probe is None:
        return None
    timing = (
        float(probe.initialDelaySeconds),
        float(probe.periodSeconds),
        float(probe.timeoutSeconds),
        probe.successThreshold,
        probe.failureThreshold,
    )
    if probe.exec_ is not None:
        return Readiness("exec", 0, "/", tuple(probe.exec_.command), *timing)
    action = probe.tcpSocket or probe.httpGet
    assert action is not None  # the manifest's validation: exactly one handler
    names = {p.name: p.containerPort for p in container.ports if p.name}
    port = names[action.port] if isinstance(action.port, str) else action.port
    path = probe.httpGet.path if probe.httpGet is not None else "/"
    return Readiness("http" if probe.httpGet else "tcp", port, path, (), *timing)


def container_specs(pod: Pod) -> list[ContainerSpec]:
    """What to run: each container's command, or the built-in responder for its ports."""
    specs, name = [], f"{pod.namespace}/{pod.name}"
    for c in pod.spec.containers:
        tcp = [p.containerPort for p in c.ports if p.protocol == "TCP"]
        udp = [p.containerPort for p in c.ports if p.protocol == "UDP"]
        argv = [*(c.command or []), *(c.args or [])]
        builtin = not argv and bool(tcp or udp)
        specs.append(ContainerSpec(c.name, argv, tcp, udp, builtin, _readiness(c), name))
    return specs


def create_sandbox(netns: str) -> str:
    """Create (or reuse) the pod's named network namespace; returns its path."""
    if not netns_exists(netns):
        create_netns(netns)
    return resolve_netns(netns)


def remove_sandbox(netns: str, containers: Sequence[ContainerStatus], host: Responders) -> None:
    """Stop the pod's processes and responders and delete its namespace (idempotent)."""
    stop_containers(containers, host)
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
