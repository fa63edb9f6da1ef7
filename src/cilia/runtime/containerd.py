"""containerd's container labels -> the agent's endpoints (the reference's containerd
watcher), over containerd's gRPC API with the protos of `cilia/runtime/protos`.

`ctr run --cni` calls the CNI plugin between creating the task and starting it, with
the container id `<namespace>-<id>`: the endpoint exists, at the init identity, before
the container runs. This watcher subscribes to containerd's events of its namespaces
(container create/update, task start) and patches the endpoint
`container-id:<namespace>-<id>` with the container's labels as `container:key=value`
(from `Containers.Get`) and its name. `ctr run -d` never sends a CNI DEL, so the
watcher also removes the endpoint when the container's task exits or is deleted, or
the container is deleted. At (re)connection, and periodically, it lists the
containers and resyncs. Pod sandboxes of containerd's CRI plugin are left to the CRI
watcher (their CNI id is the sandbox id, their labels come from PodSandboxStatus).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from cilia.runtime import grpc_protos
from cilia.runtime.watcher import EventWatcher

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACES = ["default"]
LABEL_SOURCE = "container"
INTERNAL_LABELS = ("io.containerd.",)  # set by containerd itself, not the user's
CRI_KIND_LABEL = "io.cri-containerd.kind"  # marks the CRI plugin's sandboxes and containers

VERSION = "/containerd.services.version.v1.Version/Version"
CONTAINERS_GET = "/containerd.services.containers.v1.Containers/Get"
CONTAINERS_LIST = "/containerd.services.containers.v1.Containers/List"
EVENTS_SUBSCRIBE = "/containerd.services.events.v1.Events/Subscribe"
LABEL_TOPICS = ("/containers/create", "/containers/update", "/tasks/start")
GONE_TOPICS = ("/containers/delete", "/tasks/exit", "/tasks/delete")


@dataclass(frozen=True)
class Container:
    id: str
    labels: dict[str, str]


class ContainerdClient(grpc_protos.Client):
    """containerd's API in one namespace (the `containerd-namespace` header)."""

    def __init__(self, socket_path: str, namespace: str) -> None:
        super().__init__(socket_path, metadata=[("containerd-namespace", namespace)])
        self.namespace = namespace

    def version(self, timeout: float = 5.0) -> str:
        return str(self.call(VERSION, timeout=timeout).version)

    def containers(self) -> list[Container]:
        return [Container(c.id, dict(c.labels)) for c in self.call(CONTAINERS_LIST).containers]

    def container(self, cid: str) -> Container | None:
        """The container, or None when there is none of that id."""
        try:
            c = self.call(CONTAINERS_GET, self.request(CONTAINERS_GET, id=cid)).container
        except grpc_protos.RpcError as exc:
            if grpc_protos.rpc_code(exc) == "NOT_FOUND":
                return None
            raise
        return Container(c.id, dict(c.labels))


def available(socket_path: str = DEFAULT_SOCKET, timeout: float = 1.0) -> bool:
    """True when a containerd answers its Version call on *socket_path*."""
    return grpc_protos.answers_version(ContainerdClient(socket_path, "default"), timeout)


def security_labels(labels: Mapping[str, str]) -> list[str]:
    """A container's labels as Cilia security labels, sorted (containerd's own left out)."""
    return sorted(
        f"{LABEL_SOURCE}:{k}={v}" for k, v in labels.items() if not k.startswith(INTERNAL_LABELS)
    )


def cni_container_id(namespace: str, cid: str) -> str:
    """The CNI container id `ctr run --cni` uses."""
    return f"{namespace}-{cid}"


def _event_subject(topic: str, event: Any) -> str | None:
    """The container id of an event; None for a task event of a secondary process."""
    if topic.startswith("/containers/"):
        return str(event.id)
    if topic == "/tasks/start":
        return str(event.container_id)
    # TaskExit / TaskDelete: `id` is the process (the container id for its init).
    exec_id = str(event.id)
    return str(event.container_id) if exec_id in ("", event.container_id) else None


class ContainerdWatcher(EventWatcher):
    """Labels of one containerd's containers (in the given namespaces) onto endpoints."""

    name = "containerd"

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        namespaces: Iterable[str] = DEFAULT_NAMESPACES,
        resync_interval: float = 30.0,
    ) -> None:
        super().__init__(socket_path, resync_interval)
        self.namespaces = list(namespaces)

    def _watching(self) -> str:
        return (
            f"watching events of namespaces {','.join(self.namespaces)} "
            f"({len(self._patched)} endpoints labelled)"
        )

    def _describe(self, exc: BaseException) -> str:
        return grpc_protos.describe(exc)

    def _cancel(self, stream: Any) -> None:
        stream.cancel()

    def _resync_now(self) -> None:
        self.resync()

    def _watch(self) -> None:
        filters = [f'namespace=="{ns}"' for ns in self.namespaces]
        events = grpc_protos.Client(self.socket_path)
        try:
            # Subscribe before listing, so a change between both is not lost.
            stream = events.stream(
                EVENTS_SUBSCRIBE, events.request(EVENTS_SUBSCRIBE, filters=filters)
            )
            self._stream = stream
            if self._stop.is_set():
                return  # stop() ran before the stream existed
            self.resync()
            self._now_connected()
            for envelope in stream:
                self._event(envelope)
        finally:
            events.close()

    def _event(self, envelope: Any) -> None:
        topic, namespace = str(envelope.topic), str(envelope.namespace)
        if namespace not in self.namespaces or topic not in LABEL_TOPICS + GONE_TOPICS:
            return
        event = grpc_protos.unpack(envelope.event)
        cid = None if event is None else _event_subject(topic, event)
        if cid is None:
            return
        if topic in GONE_TOPICS:
            self._remove(namespace, cid)
            return
        with ContainerdClient(self.socket_path, namespace) as client:
            container = client.container(cid)
        if container is not None and cid in self._known().get(namespace, set()):
            self._apply(namespace, container)

    def _known(self) -> dict[str, set[str]]:
        """Namespace -> ids of its containers that may have a CNI endpoint `<ns>-<id>`.

        A CNI id is split at every namespace it starts with (`a-b-c` is `b-c` of
        namespace `a` and `c` of namespace `a-b`); the callers look the ids up."""
        assert self._owner is not None
        cni_ids = {
            str(v.get("container-id"))
            for v in self._owner.endpoint_views()
            if v.get("runtime") == "cni"
        }
        known: dict[str, set[str]] = {}
        for namespace in self.namespaces:
            prefix = cni_container_id(namespace, "")
            known[namespace] = {c[len(prefix) :] for c in cni_ids if c.startswith(prefix)}
        return known

    def resync(self) -> None:
        """Label the endpoints of every container; remove those whose container is gone."""
        known = self._known()
        present: dict[str, dict[str, Container]] = {}
        for namespace in self.namespaces:
            with ContainerdClient(self.socket_path, namespace) as client:
                present[namespace] = {c.id: c for c in client.containers()}
        found = {
            cni_container_id(ns, cid)
            for ns, cids in known.items()
            for cid in cids
            if cid in present[ns]
        }
        self._forget_all_but(found)
        for namespace, cids in known.items():
            for cid in cids:
                if cid in present[namespace]:
                    self._apply(namespace, present[namespace][cid])
                elif cni_container_id(namespace, cid) not in found:
                    self._remove(namespace, cid)
        self.resyncs += 1

    def _apply(self, namespace: str, container: Container) -> None:
        if CRI_KIND_LABEL in container.labels:
            return  # a CRI pod's: the CRI watcher labels it
        self._patch(_key(namespace, container.id), security_labels(container.labels), container.id)

    def _remove(self, namespace: str, cid: str) -> None:
        """The container's task or the container is gone: so is its network namespace."""
        assert self._owner is not None
        key = _key(namespace, cid)
        with self._lock:
            self._patched.pop(key, None)
            with suppress(Exception):  # the agent's own error: logged there
                if self._owner.endpoint_remove(key):
                    log.info("containerd watcher: %s removed (container gone)", key)


def _key(namespace: str, cid: str) -> str:
    return f"container-id:{cni_container_id(namespace, cid)}"
