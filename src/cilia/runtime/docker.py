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
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from typing import Any

import docker
import docker.errors

from cilia.runtime.docker_plugin import container_id, endpoint_key
from cilia.runtime.owner import EndpointOwner, EndpointPatch

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/run/docker.sock"
LABEL_SOURCE = "container"
RETRY_MAX = 5.0


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


class DockerWatcher:
    """Labels of the containers of one Docker daemon, onto their Cilia endpoints."""

    name = "docker"

    def __init__(self, socket_path: str = DEFAULT_SOCKET, resync_interval: float = 30.0) -> None:
        self.socket_path = socket_path
        self.resync_interval = resync_interval
        self._owner: EndpointOwner | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._patched: dict[str, tuple[list[str], str]] = {}
        """Endpoint key -> (labels, name) last given to the owner."""
        self._stream: Any = None
        self._connected = False
        self._error = ""
        self.resyncs = 0

    # -- life cycle -------------------------------------------------------

    def start(self, owner: EndpointOwner) -> None:
        """Follow the daemon's events and resync periodically, each on its thread."""
        if self._threads:
            return
        self._owner = owner
        self._stop.clear()
        for target, what in ((self._follow, "events"), (self._resync_loop, "resync")):
            thread = threading.Thread(target=target, name=f"docker-{what}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop both threads (the event stream is closed to wake its reader)."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            with suppress(Exception):
                stream.close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []

    def health(self) -> dict[str, Any]:
        """Connected to the daemon's event stream, or the last error."""
        if not self._threads:
            message = "not started"
        elif self._connected:
            message = f"watching events ({len(self._patched)} endpoints labelled)"
        else:
            message = self._error or "connecting"
        return {
            "runtime": self.name,
            "endpoint": self.socket_path,
            "healthy": bool(self._threads) and self._connected,
            "message": message,
        }

    # -- work -------------------------------------------------------------

    def _client(self) -> docker.APIClient:
        return docker.APIClient(base_url=_url(self.socket_path), timeout=30)

    def _follow(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                client = self._client()
            except docker.errors.DockerException as exc:
                self._failed(exc)
            else:
                try:
                    # Subscribe before listing, so a start between both is not lost.
                    since = int(time.time())  # a second replayed again is harmless
                    self._stream = client.events(
                        since=since,
                        filters={"type": ["container", "network"], "event": ["start", "connect"]},
                        decode=True,
                    )
                    self.resync(client)
                    self._connected, self._error, delay = True, "", 0.2
                    for event in self._stream:
                        self._event(client, event)
                    if not self._stop.is_set():
                        self._failed(ConnectionError("the event stream ended"))
                except Exception as exc:  # daemon gone or restarting: retry
                    if not self._stop.is_set():
                        self._failed(exc)
                finally:
                    self._stream = None
                    client.close()
            self._stop.wait(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _failed(self, exc: BaseException) -> None:
        self._connected = False
        self._error = f"{type(exc).__name__}: {exc}"
        log.warning("docker watcher on %s: %s", self.socket_path, self._error)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync_interval):
            if not self._connected:
                continue
            try:
                client = self._client()
                try:
                    self.resync(client)
                finally:
                    client.close()
            except Exception as exc:
                self._failed(exc)

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
        with self._lock:
            for key in [k for k in self._patched if k.split(":", 1)[1] not in known]:
                del self._patched[key]
        for c in client.containers():
            names = c.get("Names") or ["/"]
            eids = _endpoint_ids((c.get("NetworkSettings") or {}).get("Networks"))
            eids = [e for e in eids if container_id(e) in known]
            self._apply(eids, c.get("Labels"), str(names[0]).lstrip("/"))
        self.resyncs += 1

    def _apply(
        self, endpoint_ids: Iterable[str], labels: Mapping[str, str] | None, name: str
    ) -> None:
        assert self._owner is not None
        wanted = (security_labels(labels), name)
        for eid in endpoint_ids:
            key = endpoint_key(eid)
            with self._lock:
                if self._patched.get(key) == wanted:
                    continue
                try:
                    self._owner.endpoint_patch(key, EndpointPatch(labels=wanted[0], name=name))
                except Exception as exc:  # removed meanwhile: the next event or resync
                    log.info("docker watcher: %s not patched: %s", key, exc)
                    continue
                self._patched[key] = wanted
