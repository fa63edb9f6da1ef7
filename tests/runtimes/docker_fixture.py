"""One real dockerd per test session, private to this run, and a local busybox image.

The daemon gets its own data root, exec root, socket, pid file, config file and
containerd namespaces under a per-run temp folder, with `--bridge=none` and no
iptables rules: it touches nothing of the machine's. Nothing is pulled: the image is
Debian's static busybox (`busybox-static`) with a symlink per applet, imported through
the SDK. At the end every container and network the tests left is removed and the
daemon is stopped by its pid, pass or fail.

Test modules import the fixture: `from tests.runtimes.docker_fixture import dockerd`.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import pytest
from pyroute2 import IPRoute

from cilia.cli.client import ApiError, Client
from cilia.runtime.docker_plugin import DockerNetworkPlugin
from cilia.runtime.owner import EndpointPatch, EndpointRequest, Family
from cilia.runtime.processes import ProcessRecord, process_alive, start_process, stop_process

BUSYBOX = Path("/bin/busybox")
HOST_NETNS = "/proc/thread-self/ns/net"  # start_process needs a namespace: ours
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def busybox_rootfs() -> bytes:
    """A rootfs tar: /bin/busybox, a symlink per applet and the usual empty folders."""
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        for folder in ("dev", "etc", "proc", "sys", "tmp"):
            entry = tarfile.TarInfo(folder)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(entry)
    return buf.getvalue()


@dataclass
class DockerDaemon:
    """A dockerd under `base`, named after `tag` (its containerd namespaces, its image)."""

    base: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    live_restore: bool = True
    proc: ProcessRecord | None = None

    @property
    def socket(self) -> Path:
        return self.base / "d.sock"

    @property
    def pid_file(self) -> Path:
        return self.base / "d.pid"

    @property
    def log(self) -> Path:
        return self.base / "dockerd.log"

    @property
    def image(self) -> str:
        """The busybox image's reference."""
        return f"cilia-busybox-{self.tag}:1"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @contextmanager
    def client(self) -> Iterator[docker.DockerClient]:
        """An SDK client of this daemon, closed on exit."""
        client = docker.DockerClient(base_url=self.url, timeout=60)
        try:
            yield client
        finally:
            client.close()

    def argv(self) -> list[str]:
        config = self.base / "daemon.json"
        config.write_text("{}")  # never the machine's /etc/docker/daemon.json
        argv = [
            "dockerd",
            f"--config-file={config}",
            f"--data-root={self.base / 'root'}",
            f"--exec-root={self.base / 'exec'}",
            f"--host={self.url}",
            f"--pidfile={self.pid_file}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            f"--containerd-namespace=cilia-test-{self.tag}",
            f"--containerd-plugins-namespace=cilia-test-{self.tag}-plugins",
        ]
        return argv + (["--live-restore"] if self.live_restore else [])

    def start(self) -> None:
        """Start the daemon and wait until it answers."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.proc = start_process(HOST_NETNS, self.argv(), self.log)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with suppress(Exception), self.client() as client:
                if client.ping():
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dockerd did not answer in {START_TIMEOUT}s: {self.tail()}")
            time.sleep(0.1)

    def tail(self) -> str:
        """The end of the daemon's log."""
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM by the pid file and wait (dockerd stops its containerd itself);
        whatever is left of its process group is killed."""
        if self.proc is None:
            return
        with suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int(self.pid_file.read_text())
            if pid == self.proc.pid:  # never signal a pid that is not our daemon
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and process_alive(self.proc):
            time.sleep(0.05)
        stop_process(self.proc)
        self.proc = None

    def unmount(self) -> None:
        """Detach mounts dockerd left under its folder (after a restart it keeps the
        private bind mount of its data root)."""
        points = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4].replace("\\040", " ")
                if Path(point).is_relative_to(self.base):
                    points.append(point)
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=True)

    def restart(self) -> None:
        """Stop and start the daemon on the same data (live restore keeps containers)."""
        self.stop()
        self.start()

    def import_image(self) -> None:
        with self.client() as client:
            repo, tag = self.image.rsplit(":", 1)
            out = client.api.import_image_from_data(
                busybox_rootfs(), repository=repo, tag=tag, changes=['CMD ["/bin/sh"]']
            )
            if "sha256:" not in str(out):
                raise RuntimeError(f"image import failed: {out}")

    def clean_containers(self) -> None:
        """Remove every container."""
        with self.client() as client:
            for container in client.containers.list(all=True):
                with suppress(docker.errors.NotFound):
                    container.remove(force=True)

    def clean(self) -> list[str]:
        """Remove every container and user network the tests left; the networks' names."""
        self.clean_containers()
        removed = []
        with self.client() as client:
            for network in client.networks.list():
                if network.name not in ("none", "host"):
                    with suppress(docker.errors.NotFound):
                        network.remove()
                        removed.append(str(network.name))
        return removed


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerDaemon]:
    """A running private dockerd with the busybox image imported."""
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root")
    if shutil.which("dockerd") is None or not BUSYBOX.exists():
        pytest.skip("needs Debian's docker.io and busybox-static (scripts/install.sh)")
    daemon = DockerDaemon(tmp_path_factory.mktemp("dockerd"))
    left: list[str] = []
    try:
        daemon.start()
        daemon.import_image()
        yield daemon
    finally:
        try:
            if daemon.proc is not None:
                left = daemon.clean()
        finally:
            daemon.stop()
            daemon.unmount()  # never on a restart: live sandboxes' namespaces are mounts
    # docker_gwbridge (a host bridge) is what dockerd makes for a container its driver
    # gave no gateway: the Cilia driver must never cause it.
    assert "docker_gwbridge" not in left, "dockerd had to create docker_gwbridge"


@dataclass
class FakeOwner:
    """An in-test `EndpointOwner` that plumbs like the agent does for Docker: a veth
    pair whose container end stays in the host namespace (Docker moves it), a /32 route
    to the container and the gateway `gateway`, an address of the host (on `lo`).
    Every call is recorded; `fail` makes `endpoint_put` refuse."""

    tag: str
    gateway: str
    addresses: list[str]
    puts: list[EndpointRequest] = field(default_factory=list)
    patches: list[tuple[str, EndpointPatch]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def endpoint_put(self, req: EndpointRequest) -> dict[str, Any]:
        with self.lock:
            self.puts.append(req)
            key = f"container-id:{req.container_id}"
            if key in self.views:
                return self.views[key]
            if self.fail:
                raise RuntimeError(self.fail)
            host = f"{self.tag}h{len(self.puts)}"
            assert req.ipv4 is not None and req.peer_in_host
            with IPRoute() as ipr:
                ipr.link("add", ifname=host, kind="veth", peer=req.interface_name)
                index = ipr.link_lookup(ifname=host)[0]
                ipr.link("set", index=index, state="up")
                Path(f"/proc/sys/net/ipv4/conf/{host}/forwarding").write_text("1")
                ipr.route(
                    "add", dst=req.ipv4, dst_len=32, oif=index, scope="link", prefsrc=self.gateway
                )
            view = {
                "id": len(self.puts),
                "container-id": req.container_id,
                "runtime": req.runtime,
                "interface": host,
                "labels": req.labels,
                "name": req.name,
                "addressing": {
                    "ipv4": req.ipv4,
                    "gateway": self.gateway,
                    "routes": [
                        {"dst": f"{self.gateway}/32"},
                        {"dst": "0.0.0.0/0", "gw": self.gateway},
                    ],
                },
            }
            self.views[key] = view
            return view

    def endpoint_patch(self, key: str, patch: EndpointPatch) -> dict[str, Any]:
        with self.lock:
            self.patches.append((key, patch))
            view = self.views.get(key)
            if view is None:
                raise KeyError(f"no endpoint {key}")
            view["labels"], view["name"] = patch.labels, patch.name
            return view

    def endpoint_remove(self, key: str) -> bool:
        with self.lock:
            self.removed.append(key)
            view = self.views.pop(key, None)
            if view is None:
                return False
            with IPRoute() as ipr:
                for index in ipr.link_lookup(ifname=view["interface"]):
                    ipr.link("del", index=index)  # takes the route along
            return True

    def endpoint_views(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.views.values())

    def ipam_allocate(self, family: Family = "ipv4") -> str:
        assert family == "ipv4"
        with self.lock:
            return self.addresses.pop(0)

    def ipam_release(self, ip: str) -> None:
        with self.lock:
            self.released.append(ip)
            if ip not in self.addresses:
                self.addresses.append(ip)

    def devices(self) -> list[str]:
        """Host devices of this owner: its veths and the container ends it was asked for."""
        with self.lock:
            ends = {req.interface_name for req in self.puts}
        with IPRoute() as ipr:
            names = [str(link.get("IFLA_IFNAME")) for link in ipr.link("dump")]
        return [n for n in names if n.startswith(self.tag) or n in ends]


@dataclass
class PluginNetwork:
    """The Cilia driver served for a fake owner, and a Docker network of it."""

    daemon: DockerDaemon
    owner: FakeOwner
    plugin: DockerNetworkPlugin
    network: str


@pytest.fixture(scope="session")
def plugin_network(dockerd: DockerDaemon) -> Iterator[PluginNetwork]:
    """`docker network create --driver P --ipam-driver P` on a per-run plugin name,
    with a FakeOwner; its gateway address lives on `lo` until the end."""
    tag = f"cd{dockerd.tag}"
    third = int(dockerd.tag[:2], 16)
    gateway = f"10.251.{third}.254"
    owner = FakeOwner(tag, gateway, [f"10.251.{third}.{n}" for n in range(2, 40)])
    plugin = DockerNetworkPlugin(owner, tag, gateway=gateway)
    with IPRoute() as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=gateway, prefixlen=32)
    try:
        plugin.start()
        with dockerd.client() as client:
            client.networks.create(tag, driver=tag, ipam=docker.types.IPAMConfig(driver=tag))
        yield PluginNetwork(dockerd, owner, plugin, tag)
    finally:
        try:
            dockerd.clean()
            plugin.stop()
        finally:
            with IPRoute() as ipr:
                lo = ipr.link_lookup(ifname="lo")[0]
                with suppress(Exception):
                    ipr.addr("del", index=lo, address=gateway, prefixlen=32)
                for name in owner.devices():
                    for index in ipr.link_lookup(ifname=name):
                        ipr.link("del", index=index)


@dataclass
class ApiOwner:
    """The `EndpointOwner` calls over a real agent's REST API, so the driver and the
    watcher can run in the test process against a real agent and datapath."""

    client: Client

    def endpoint_put(self, req: EndpointRequest) -> dict[str, Any]:
        body = req.model_dump(by_alias=True, exclude_none=True)
        view: dict[str, Any] = self.client.request(
            "PUT", f"/endpoint/container-id:{req.container_id}", json=body
        )
        return view

    def endpoint_patch(self, key: str, patch: EndpointPatch) -> dict[str, Any]:
        body = patch.model_dump(by_alias=True, exclude_none=True)
        view: dict[str, Any] = self.client.request("PATCH", f"/endpoint/{key}", json=body)
        return view

    def endpoint_remove(self, key: str) -> bool:
        try:
            self.client.request("DELETE", f"/endpoint/{key}")
        except ApiError as exc:
            if "not found" in str(exc):
                return False
            raise
        return True

    def endpoint_views(self) -> list[dict[str, Any]]:
        views: list[dict[str, Any]] = self.client.request("GET", "/endpoint")
        return views

    def ipam_allocate(self, family: Family = "ipv4") -> str:
        return str(self.client.request("POST", "/ipam", params={"family": family})[family])

    def ipam_release(self, ip: str) -> None:
        self.client.request("DELETE", f"/ipam/{ip}")
