"""Kubernetes pod labels from a CRI runtime (containerd's CRI plugin, cri-o) -> endpoints.

A CRI runtime calls the CNI plugin for a pod sandbox with the sandbox id as the
container id (and `K8S_POD_NAMESPACE`/`K8S_POD_NAME` in `CNI_ARGS`); the endpoint
starts at the init identity. The watcher asks the runtime's `RuntimeService`
(`runtime.v1`, over gRPC) for `PodSandboxStatus` of such endpoints and patches them
with the pod's labels as `k8s:key=value` plus `k8s:io.kubernetes.pod.namespace=NS`,
the namespace and the pod name. The same client speaks to cri-o, which serves the
same API (cri-o itself is not installable on this machine; the CRI path is tested
against containerd 1.6).

CRI v1 has no usable event stream here: `GetContainerEvents` (for the kubelet's
evented PLEG) arrived after containerd 1.6, whose CRI plugin answers it
Unimplemented, and it reports container state changes, not sandbox labels anyway.
So the watcher polls at a short interval (0.5 s): the endpoints come from the owner
in-process (cheap), and the runtime is asked only about endpoints it has not seen
yet, so a quiet node costs one `Version` health call per resync interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cilia.runtime import grpc_protos
from cilia.runtime.owner import EndpointOwner, EndpointPatch

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/run/crio/crio.sock"
LABEL_SOURCE = "k8s"
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
KUBELET_LABELS = "io.kubernetes."  # the kubelet's own sandbox labels (pod name, uid, ...)

SERVICE = "/runtime.v1.RuntimeService"
VERSION = f"{SERVICE}/Version"
RUN_POD_SANDBOX = f"{SERVICE}/RunPodSandbox"
STOP_POD_SANDBOX = f"{SERVICE}/StopPodSandbox"
REMOVE_POD_SANDBOX = f"{SERVICE}/RemovePodSandbox"
POD_SANDBOX_STATUS = f"{SERVICE}/PodSandboxStatus"
LIST_POD_SANDBOX = f"{SERVICE}/ListPodSandbox"
# containerd 1.6 lists a sandbox only once RunPodSandbox is done, after the CNI ADD made
# its endpoint: an endpoint is taken for another runtime's after this long unknown.
FOREIGN_AFTER = 120.0
NETWORK_MODES = {"pod": 0, "node": 2}  # runtime.v1.NamespaceMode POD, NODE


@dataclass(frozen=True)
class Sandbox:
    """A pod sandbox as the runtime reports it."""

    id: str
    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    ready: bool
    ip: str = ""


def _sandbox(msg: Any, ip: str = "") -> Sandbox:
    meta = msg.metadata
    return Sandbox(
        id=str(msg.id),
        name=str(meta.name),
        namespace=str(meta.namespace),
        uid=str(meta.uid),
        labels=dict(msg.labels),
        ready=msg.state == 0,  # SANDBOX_READY
        ip=ip,
    )


class CriClient(grpc_protos.Client):
    """The pod sandbox calls of a CRI runtime's RuntimeService (as the kubelet makes them)."""

    def version(self, timeout: float = 5.0) -> tuple[str, str]:
        """(runtime name, runtime version)."""
        res = self.call(VERSION, self.request(VERSION, version="v1"), timeout=timeout)
        return str(res.runtime_name), str(res.runtime_version)

    def run_sandbox(
        self,
        name: str,
        namespace: str,
        uid: str,
        labels: Mapping[str, str],
        *,
        network: str = "pod",
        cgroup_parent: str = "",
        log_directory: str = "",
        timeout: float = 60.0,
    ) -> str:
        """RunPodSandbox; the sandbox id. `network` "pod" (CNI) or "node" (host)."""
        pb = grpc_protos.message
        ns_opts = pb("runtime.v1.NamespaceOption")(network=NETWORK_MODES[network])
        config = pb("runtime.v1.PodSandboxConfig")(
            metadata=pb("runtime.v1.PodSandboxMetadata")(name=name, namespace=namespace, uid=uid),
            hostname=name if network == "pod" else "",  # a host-network pod has the node's
            log_directory=log_directory,
            labels=dict(labels),
            linux=pb("runtime.v1.LinuxPodSandboxConfig")(
                cgroup_parent=cgroup_parent,
                security_context=pb("runtime.v1.LinuxSandboxSecurityContext")(
                    namespace_options=ns_opts
                ),
            ),
        )
        req = self.request(RUN_POD_SANDBOX, config=config)
        return str(self.call(RUN_POD_SANDBOX, req, timeout=timeout).pod_sandbox_id)

    def stop_sandbox(self, sandbox_id: str, timeout: float = 60.0) -> None:
        req = self.request(STOP_POD_SANDBOX, pod_sandbox_id=sandbox_id)
        self.call(STOP_POD_SANDBOX, req, timeout=timeout)

    def remove_sandbox(self, sandbox_id: str, timeout: float = 60.0) -> None:
        req = self.request(REMOVE_POD_SANDBOX, pod_sandbox_id=sandbox_id)
        self.call(REMOVE_POD_SANDBOX, req, timeout=timeout)

    def sandbox_status(self, sandbox_id: str, timeout: float = 5.0) -> Sandbox | None:
        """The sandbox, or None when the runtime has none of that id."""
        req = self.request(POD_SANDBOX_STATUS, pod_sandbox_id=sandbox_id)
        try:
            status = self.call(POD_SANDBOX_STATUS, req, timeout=timeout).status
        except grpc_protos.RpcError as exc:
            if grpc_protos.rpc_code(exc) == "NOT_FOUND":
                return None
            raise
        return _sandbox(status, str(status.network.ip))

    def list_sandboxes(self, timeout: float = 5.0) -> list[Sandbox]:
        return [_sandbox(s) for s in self.call(LIST_POD_SANDBOX, timeout=timeout).items]


def available(socket_path: str = DEFAULT_SOCKET, timeout: float = 1.0) -> bool:
    """True when a CRI runtime answers Version (runtime.v1) on *socket_path*."""
    return grpc_protos.answers_version(CriClient(socket_path), timeout)


def security_labels(sandbox: Sandbox) -> list[str]:
    """A pod's labels as Cilia's k8s labels (the kubelet's own left out), sorted."""
    labels = {k: v for k, v in sandbox.labels.items() if not k.startswith(KUBELET_LABELS)}
    labels[NAMESPACE_LABEL] = sandbox.namespace
    return sorted(f"{LABEL_SOURCE}:{k}={v}" for k, v in labels.items())


class CriWatcher:
    """Pod labels of one CRI runtime onto the endpoints of its pod sandboxes."""

    name = "cri"

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        poll_interval: float = 0.5,
        resync_interval: float = 10.0,
    ) -> None:
        self.socket_path = socket_path
        self.poll_interval = poll_interval
        self.resync_interval = resync_interval
        self._owner: EndpointOwner | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._patched: dict[str, list[str]] = {}
        """Container id -> labels given to the owner."""
        self._missing: dict[str, float] = {}
        """Container id -> when the runtime first had no sandbox of that id."""
        self._runtime = ""
        self._connected = False
        self._error = ""

    def start(self, owner: EndpointOwner) -> None:
        if self._thread is not None:
            return
        self._owner = owner
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cri-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None

    def health(self) -> dict[str, Any]:
        if self._thread is None:
            message = "not started"
        elif self._connected:
            message = f"{self._runtime}: polling ({len(self._patched)} pod endpoints labelled)"
        else:
            message = self._error or "connecting"
        return {
            "runtime": self.name,
            "endpoint": self.socket_path,
            "healthy": self._thread is not None and self._connected,
            "message": message,
        }

    def _run(self) -> None:
        client = CriClient(self.socket_path)
        next_check = 0.0
        elapsed = 0.0
        try:
            while not self._stop.is_set():
                try:
                    if elapsed >= next_check:  # health
                        self._runtime = " ".join(client.version())
                        next_check = elapsed + self.resync_interval
                    self.poll(client)
                    self._connected, self._error = True, ""
                except Exception as exc:
                    self._connected = False
                    self._error = grpc_protos.describe(exc)
                    log.warning("CRI watcher on %s: %s", self.socket_path, self._error)
                    next_check = elapsed  # check again on the next tick
                self._stop.wait(self.poll_interval)
                elapsed += self.poll_interval
        finally:
            client.close()

    def poll(self, client: CriClient) -> None:
        """Label the endpoints of sandboxes not labelled yet; forget removed endpoints."""
        assert self._owner is not None
        cids = {
            str(v.get("container-id"))
            for v in self._owner.endpoint_views()
            if v.get("runtime") == "cni"
        }
        for cid in set(self._patched) - cids:
            del self._patched[cid]
        for cid in set(self._missing) - cids:
            del self._missing[cid]
        now = time.monotonic()
        for cid in sorted(cids - set(self._patched)):
            if now - self._missing.get(cid, now) > FOREIGN_AFTER:
                continue  # another runtime's container, not a pod sandbox
            sandbox = client.sandbox_status(cid)
            if sandbox is None:
                self._missing.setdefault(cid, now)
                continue
            self._missing.pop(cid, None)
            labels = security_labels(sandbox)
            patch = EndpointPatch(labels=labels, namespace=sandbox.namespace, name=sandbox.name)
            try:
                self._owner.endpoint_patch(f"container-id:{cid}", patch)
            except Exception as exc:  # removed meanwhile: forgotten on the next poll
                log.info("CRI watcher: %s not patched: %s", cid, exc)
                continue
            self._patched[cid] = labels
