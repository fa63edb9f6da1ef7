"""An etcd server (Debian's `etcd-server`) with a private data directory, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ETCD_BINARY = "etcd"


class EtcdError(RuntimeError):
    """etcd could not be started or did not become healthy."""


def _pid_alive(pid: int) -> bool:
    """Is `pid` a running process (a zombie is not)?"""
    with contextlib.suppress(ChildProcessError):  # reap it if it is our child
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def health_error(url: str, timeout: float = 1.0) -> str | None:
    """None when the etcd at `url` answers /health with true, else why not."""
    try:
        health = httpx.get(f"{url}/health", timeout=timeout, trust_env=False).json().get("health")
    except (httpx.HTTPError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None if health == "true" else f"health is {health!r}"


@dataclass
class EtcdServer:
    """One single-member etcd: client URLs on the given hosts, data under `directory`.

    `start()` is idempotent (a running server from the pid file is kept), `stop()` stops
    it by pid and keeps the data (so a restart finds it), `remove()` also deletes it.
    """

    directory: Path
    client_port: int
    peer_port: int
    hosts: tuple[str, ...] = ("127.0.0.1",)
    name: str = "cilia-etcd"
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def pid_file(self) -> Path:
        return self.directory / "etcd.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "etcd.log"

    @property
    def client_urls(self) -> list[str]:
        """One URL per listening host, the first being the one to prefer."""
        return [f"http://{h}:{self.client_port}" for h in self.hosts]

    @property
    def url(self) -> str:
        return self.client_urls[0]

    def pid(self) -> int | None:
        """PID of the running server (from the pid file), or None.

        A live PID counts only if its command line names our data directory: after a
        kill -9 the pid file may outlive the server and its PID be reused."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if str(self.data_dir).encode() in cmdline and _pid_alive(pid) else None

    def start(self, timeout: float = 20.0) -> str:
        """Start (unless already running) and wait until healthy; returns the first URL."""
        if shutil.which(ETCD_BINARY) is None:
            raise EtcdError("etcd is not installed (apt-get install etcd-server)")
        if self.pid() is None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            peer = f"http://127.0.0.1:{self.peer_port}"
            argv = [
                ETCD_BINARY,
                "--name",
                self.name,
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                ",".join(self.client_urls),
                "--advertise-client-urls",
                ",".join(self.client_urls),
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"{self.name}={peer}",
                "--log-level",
                "warn",
                *self.extra_args,
            ]
            with open(self.log_file, "ab") as log:
                self._proc = subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=dict(self.env) if self.env is not None else None,
                )
            self.pid_file.write_text(f"{self._proc.pid}\n")
        self.wait_healthy(timeout)
        return self.url

    def wait_healthy(self, timeout: float) -> None:
        """Wait for /health to answer true."""
        deadline = time.monotonic() + timeout
        last: str | None = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise EtcdError(f"etcd exited with {self._proc.returncode}; see {self.log_file}")
            last = health_error(self.url)
            if last is None:
                return
            time.sleep(0.05)
        raise EtcdError(f"etcd at {self.url} not healthy after {timeout:.0f}s ({last})")

    def stop(self, timeout: float = 10.0, graceful: bool = True) -> bool:
        """Stop the server by pid (TERM, then KILL; only KILL unless `graceful`); True if
        one was running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            if self._proc is not None:
                self._proc.poll()
            time.sleep(0.02)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait(timeout=timeout)
            self._proc = None
        self.pid_file.unlink(missing_ok=True)
        return True

    def remove(self) -> None:
        """Stop (a clean shutdown is pointless: the data goes) and delete the data
        directory, pid file and log."""
        self.stop(graceful=False)
        shutil.rmtree(self.directory, ignore_errors=True)
