"""Docker's container labels -> the agent's endpoints (the reference's docker watcher).

The Cilia network driver creates a Docker container's endpoint at Join, before the
container runs and without its labels: the endpoint holds the init identity. This
watcher follows the daemon's events through the `docker` SDK (container `start`,
network `connect`), inspects the container and patches its endpoint (keyed by the
libnetwork endpoint id, `NetworkSettings.Networks[*].EndpointID`) with its labels
as `container:key=value` and its name; the endpoint moves to its real identity.
A periodic resync over the running containers catches what an event stream lost
(a daemon restart, a watcher started after the containers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import docker
import docker.errors

from cilia.runtime.docker_plugin import container_id, endpoint_key
from cilia.runtime.watcher import EventWatcher

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/run/docker.sock"
LABEL_SOURCE = "container"


def _url(socket_path: str) -> str:
    return socket_path if "://" in socket_path else f"unix://{socket_path}"


def available(socket_path: str = DEFAULT_SOCKET, timeout: int = 1) -> bool:
    """True when a Docker daemon answers on *socket_path*."""
    try:
        client = docker.APIClient(base_url=_url(socket_path), timeout=timeout)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except (docker.errors.DockerException, OSError):
        return False
    finally:
        client.close()


def security_labels(labels: Mapping[str, str] | None) -> list[str]:
    """Docker container labels as Cilia security labels, sorted."""
    return sorted(f"{LABEL_SOURCE}:{k}={v}" for k, v in (labels or {}).items())


def _endpoint_ids(networks: Mapping[str, Any] | None) -> list[str]:
    return [n["EndpointID"] for n in (networks or {}).values() if n and n.get("EndpointID")]


class DockerWatcher(EventWatcher):
    """Labels of the containers of one Docker daemon, onto their Cilia endpoints."""

    name = "docker"

    def __init__(self, socket_path: str = DEFAULT_SOCKET, resync_interval: float = 30.0) -> None:
        super().__init__(socket_path, resync_interval)

    def _client(self) -> docker.APIClient:
        return docker.APIClient(base_url=_url(self.socket_path), timeout=30)

    def _cancel(self, stream: Any) -> None:
        stream.close()

    def _watch(self) -> None:
        client = self._client()
        try:
            # Subscribe before listing, so a start between both is not lost.
            since = int(time.time())  # a second replayed again is harmless
            self._stream = client.events(
                since=since,
                filters={"type": ["container", "network"], "event": ["start", "connect"]},
                decode=True,
            )
            self.resync(client)
            self._now_connected()
            for event in self._stream:
                self._event(client, event)
        finally:
            client.close()

    def _resync_now(self) -> None:
        client = self._client()
        try:
            self.resync(client)
        finally:
            client.close()

    def _event(self, client: docker.APIClient, event: Mapping[str, Any]) -> None:
        actor = event.get("Actor") or {}
        if event.get("Type") == "network":
            cid = (actor.get("Attributes") or {}).get("container")
        else:
            cid = actor.get("ID") or event.get("id")
        if not cid:
            return
        try:
            info = client.inspect_container(cid)
        except docker.errors.NotFound:
            return  # already gone: its endpoint goes with DeleteEndpoint
        name = str(info.get("Name", "")).lstrip("/")
        labels = (info.get("Config") or {}).get("Labels")
        networks = (info.get("NetworkSettings") or {}).get("Networks")
        known = self._known()
        self._apply([e for e in _endpoint_ids(networks) if container_id(e) in known], labels, name)

    def _known(self) -> set[str]:
        """Container ids of the owner's endpoints."""
        assert self._owner is not None
        return {str(v.get("container-id")) for v in self._owner.endpoint_views()}

    def resync(self, client: docker.APIClient) -> None:
        """Label the endpoints of every running container; forget removed endpoints."""
        known = self._known()
        self._forget_all_but(known)
        for c in client.containers():
            names = c.get("Names") or ["/"]
            eids = _endpoint_ids((c.get("NetworkSettings") or {}).get("Networks"))
            eids = [e for e in eids if container_id(e) in known]
            self._apply(eids, c.get("Labels"), str(names[0]).lstrip("/"))
        self.resyncs += 1

    def _apply(
        self, endpoint_ids: Iterable[str], labels: Mapping[str, str] | None, name: str
    ) -> None:
        for eid in endpoint_ids:
            self._patch(endpoint_key(eid), security_labels(labels), name)
