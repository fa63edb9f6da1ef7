"""Which container runtimes the agent follows (`--container-runtime`) and their parts.

`auto` tries Docker, containerd and cri-o at their default sockets (as the reference
did) and keeps those that answer; a runtime named explicitly is kept even while it
does not answer, so `cilia status` shows it unhealthy. Docker brings the network
driver too; containerd brings its event watcher and the CRI watcher of its built-in
CRI plugin; cri-o speaks CRI only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cilia.agent.config import AgentConfig
from cilia.runtime.owner import EndpointOwner, RuntimeWatcher

log = logging.getLogger("cilia.agent")

DEFAULT_SOCKETS = {
    "docker": "/var/run/docker.sock",
    "containerd": "/var/run/containerd/containerd.sock",
    "crio": "/var/run/crio/crio.sock",
}
AUTO_ORDER = ("docker", "containerd", "crio")
CONTAINERD_NAMESPACES = ["default", "k8s.io"]
"""`ctr`'s namespace and the one containerd's CRI plugin (kubelet's pods) uses."""


class Part(Protocol):
    """A watcher or a driver: started, stopped and reported the same way."""

    def stop(self) -> None: ...

    def health(self) -> dict[str, Any]: ...


def _answers(runtime: str) -> Callable[[str], bool]:
    if runtime == "docker":
        from cilia.runtime.docker import available as docker_available

        return docker_available
    if runtime == "containerd":
        from cilia.runtime.containerd import available as containerd_available

        return containerd_available
    from cilia.runtime.cri import available as cri_available

    return cri_available


def selected(config: AgentConfig) -> list[tuple[str, str]]:
    """(runtime, socket) of the runtimes to follow."""
    kinds = config.container_runtime
    if kinds == ["none"]:
        return []
    sockets = {**DEFAULT_SOCKETS, **config.container_runtime_endpoint}
    explicit = [k for k in dict.fromkeys(kinds) if k != "auto"]
    chosen = [(k, sockets[k]) for k in explicit]
    if "auto" in kinds:
        for runtime in AUTO_ORDER:
            path = sockets[runtime]
            if runtime not in explicit and os.path.exists(path) and _answers(runtime)(path):
                chosen.append((runtime, sockets[runtime]))
    return chosen


def _watchers(runtime: str, socket_path: str) -> list[RuntimeWatcher]:
    if runtime == "docker":
        from cilia.runtime.docker import DockerWatcher

        return [DockerWatcher(socket_path)]
    from cilia.runtime.cri import CriWatcher

    if runtime == "containerd":
        from cilia.runtime.containerd import ContainerdWatcher

        return [ContainerdWatcher(socket_path, CONTAINERD_NAMESPACES), CriWatcher(socket_path)]
    return [CriWatcher(socket_path)]


@dataclass
class Runtimes:
    """The runtime watchers and the Docker driver of one agent."""

    parts: list[Part] = field(default_factory=list)

    @classmethod
    def start(cls, config: AgentConfig, owner: EndpointOwner) -> Runtimes:
        """Start the parts of every selected runtime; one that fails to start is
        reported, the others go on."""
        runtimes = cls()
        for runtime, socket_path in selected(config):
            if runtime == "docker":
                from cilia.datapath.pod_network import GATEWAY_IPV6
                from cilia.runtime.docker_plugin import DockerNetworkPlugin

                plugin = DockerNetworkPlugin(
                    owner,
                    config.docker_plugin_name,
                    config.docker_plugin_dir,
                    gateway=config.host_router_ip,
                    gateway6=GATEWAY_IPV6 if config.enable_ipv6 else "",
                )
                try:
                    plugin.start()
                    runtimes.parts.append(plugin)
                except Exception as exc:
                    log.error("Docker network plugin %s: %s", config.docker_plugin_name, exc)
            for watcher in _watchers(runtime, socket_path):
                watcher.start(owner)
                runtimes.parts.append(watcher)
            log.info("following %s on %s", runtime, socket_path)
        return runtimes

    def stop(self) -> None:
        for part in reversed(self.parts):
            try:
                part.stop()
            except Exception as exc:
                log.warning("stopping %s: %s", part.health().get("runtime"), exc)
        self.parts = []

    def health(self) -> list[dict[str, Any]]:
        """One `cilia status` line per watcher or driver."""
        return [part.health() for part in self.parts]
