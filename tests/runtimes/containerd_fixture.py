"""One real containerd per test session, private to this run, with a local OCI image.

The daemon gets its own root, state, socket, config file, CNI folders and namespace
names (`cilia-test-<tag>`, and `k8s.io` for the CRI plugin, private to this daemon's
root); its CRI plugin runs the pod sandboxes from the same local image. Nothing is
pulled: the image is Debian's static busybox built into an OCI layout (layer tar,
config, manifest, index.json, oci-layout) in Python and imported with
`ctr images import`. At the end every sandbox, task and container left is removed,
the daemon is stopped by its pid, and the test fails if a shim, mount or cgroup of
this run is left.

Test modules get it from `tests/runtimes/conftest.py` (`containerd` fixture).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cilia.runtime import grpc_protos
from cilia.runtime.containerd import VERSION, ContainerdClient
from cilia.runtime.cri import CriClient
from cilia.runtime.processes import ProcessRecord, process_alive, start_process, stop_process
from tests.runtimes.docker_fixture import BUSYBOX, HOST_NETNS, busybox_rootfs

__all__ = ["BUSYBOX", "Containerd", "oci_image_tar"]

CRI_NAMESPACE = "k8s.io"  # where containerd's CRI plugin keeps its images and sandboxes
CTR_DEFAULT = "default"  # ctr's namespace, watched by the agent
RUNC_STATE = Path("/run/containerd/runc")
REFERENCE_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
IMAGE_CMD = ["/bin/sleep", "infinity"]  # also the pod sandbox's process


def _blob(layout: dict[str, bytes], data: bytes, media_type: str) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    layout[f"blobs/sha256/{digest[7:]}"] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def oci_image_tar(name: str) -> bytes:
    """An OCI image layout tar of busybox named *name* (`io.containerd.image.name`)."""
    layer = busybox_rootfs()
    files: dict[str, bytes] = {}
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": IMAGE_CMD},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _blob(
            files, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"
        ),
        "layers": [_blob(files, layer, "application/vnd.oci.image.layer.v1.tar")],
    }
    entry = _blob(
        files, json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json"
    )
    entry["platform"] = {"architecture": "amd64", "os": "linux"}
    entry["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
    }
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()
    files["oci-layout"] = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Containerd:
    """A containerd under `base`, named after `tag` (its namespace, image, cgroups)."""

    base: Path
    tag: str
    proc: ProcessRecord | None = None
    cni_conf_dir: Path = field(init=False)
    cni_bin_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.cni_conf_dir = self.base / "cni" / "net.d"
        self.cni_bin_dir = self.base / "cni" / "bin"

    @property
    def socket(self) -> str:
        return str(self.base / "c.sock")

    @property
    def namespace(self) -> str:
        """The namespace of the tests' `ctr` containers."""
        return f"cilia-test-{self.tag}"

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Where the image is and tests make containers (all private to this daemon)."""
        return (self.namespace, CTR_DEFAULT, CRI_NAMESPACE)

    @property
    def image(self) -> str:
        return f"cilia.test/busybox-{self.tag}:1"

    @property
    def cgroup_parent(self) -> str:
        """Cgroup parent of the CRI sandboxes (ctr's containers go under /<namespace>)."""
        return f"/cilia-test-{self.tag}-pods"

    @property
    def log(self) -> Path:
        return self.base / "containerd.log"

    def write_config(self) -> Path:
        cri = '[plugins."io.containerd.grpc.v1.cri"]'
        config = f"""\
version = 2
root = "{self.base / "root"}"
state = "{self.base / "state"}"

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.base / "opt"}"

{cri}
  sandbox_image = "{self.image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # sandboxes get oom_score_adj -998, which this machine (itself a container without
  # CAP_SYS_RESOURCE) refuses: runc fails "failed to update /proc/self/oom_score_adj"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true  # sandboxes' namespaces under our state, not /run/netns

{cri[:-1]}.cni]
  bin_dir = "{self.cni_bin_dir}"
  conf_dir = "{self.cni_conf_dir}"

{cri[:-1]}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

{cri[:-1]}.containerd.runtimes.runc.options]
  Root = "{self.base / "runc"}"
"""
        path = self.base / "config.toml"
        path.write_text(config)
        return path

    def ctr(self, *args: str, namespace: str | None = None, timeout: float = 60) -> None:
        """`ctr -a SOCKET -n NS ARGS...`; raises with its stderr unless it exits 0."""
        argv = ["ctr", "-a", self.socket, "-n", namespace or self.namespace, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr}")

    @contextmanager
    def client(self, namespace: str | None = None) -> Iterator[ContainerdClient]:
        client = ContainerdClient(self.socket, namespace or self.namespace)
        try:
            yield client
        finally:
            client.close()

    @contextmanager
    def cri(self) -> Iterator[CriClient]:
        client = CriClient(self.socket)
        try:
            yield client
        finally:
            client.close()

    def start(self) -> None:
        """Start the daemon and wait until its Version call answers."""
        for folder in (self.base, self.cni_conf_dir, self.cni_bin_dir):
            folder.mkdir(parents=True, exist_ok=True)
        loopback = self.cni_bin_dir / "loopback"  # the CRI plugin sets up every sandbox's lo
        if not loopback.exists():
            loopback.symlink_to(REFERENCE_PLUGINS / "loopback")
        argv = ["containerd", "--config", str(self.write_config()), "--log-level", "info"]
        self.proc = start_process(HOST_NETNS, argv, self.log)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with suppress(grpc_protos.RpcError), self.client() as client:
                client.call(VERSION, timeout=1.0)
                return
            if time.monotonic() > deadline or not process_alive(self.proc):
                self.stop()
                raise RuntimeError(f"containerd did not answer: {self.tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM by pid and wait; running containers' shims stay (as in production)."""
        if self.proc is None:
            return
        if process_alive(self.proc):
            os.kill(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and process_alive(self.proc):
            time.sleep(0.05)
        stop_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def import_image(self) -> None:
        """The busybox image into the tests' namespace and the CRI plugin's."""
        tar = self.base / "busybox-oci.tar"
        tar.write_bytes(oci_image_tar(self.image))
        try:
            for namespace in self.namespaces:
                self.ctr("images", "import", str(tar), namespace=namespace)
        finally:
            tar.unlink()

    def remove_container(self, cid: str, namespace: str | None = None) -> None:
        """Kill and delete a `ctr` container's task, then the container (and snapshot);
        nothing when there is no such container."""
        with self.client(namespace) as client:
            if client.container(cid) is None:
                return
        with suppress(AssertionError):
            self.ctr("tasks", "delete", "--force", cid, namespace=namespace)
        self.ctr("containers", "delete", cid, namespace=namespace)

    def remove_sandboxes(self) -> None:
        """Stop and remove every pod sandbox (before its CNI network config goes)."""
        with self.cri() as cri:
            for sandbox in cri.list_sandboxes():
                cri.stop_sandbox(sandbox.id)
                cri.remove_sandbox(sandbox.id)

    def clean(self) -> None:
        """Remove every pod sandbox and container the tests left."""
        self.remove_sandboxes()
        for namespace in self.namespaces:
            with self.client(namespace) as client:
                for container in client.containers():
                    self.remove_container(container.id, namespace)

    def shims(self) -> list[int]:
        """Pids of shims serving this daemon (their command line names its socket)."""
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"containerd-shim" in argv[0] and self.socket.encode() in argv:
                    pids.append(int(pid))
        return pids

    def leftovers(self) -> list[str]:
        """Shims, mounts and cgroups of this run still there (after `clean` and `stop`).

        Empty runc and cgroup folders are removed (ctr's `default` runc folder too: no
        other containerd of this machine uses it)."""
        left = [f"shim {pid}" for pid in self.shims()]
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        left += [f"mount {m}" for m in mounts if str(self.base) in m]
        # runc leaves the empty parents of its cgroups, and ctr's runc state folder
        # (ctr sets no runc root: /run/containerd/runc/<namespace>)
        folders = [RUNC_STATE / self.namespace, RUNC_STATE / CTR_DEFAULT]
        for controller in Path("/sys/fs/cgroup").iterdir():
            folders += [controller / self.namespace, controller / self.cgroup_parent.strip("/")]
        for folder in folders:
            if folder.is_dir():
                try:
                    folder.rmdir()
                except OSError:
                    left.append(f"not empty: {folder}")
        return left
