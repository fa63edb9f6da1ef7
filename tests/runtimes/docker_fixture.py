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
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import pytest

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

    def clean(self) -> list[str]:
        """Remove every container and user network the tests left; the networks' names."""
        removed = []
        with self.client() as client:
            for container in client.containers.list(all=True):
                with suppress(docker.errors.NotFound):
                    container.remove(force=True)
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
    # docker_gwbridge (a host bridge) is what dockerd makes for a container its driver
    # gave no gateway: the Cilia driver must never cause it.
    assert "docker_gwbridge" not in left, "dockerd had to create docker_gwbridge"
