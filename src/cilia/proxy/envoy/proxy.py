"""Envoy as the node's HTTP proxy: validated, atomically applied config and request records."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cilia.policy.desired import Direction
from cilia.proxy.envoy import accesslog
from cilia.proxy.envoy import config as cfg
from cilia.proxy.envoy.accesslog import LineBuffer
from cilia.proxy.envoy.config import HttpListener, Settings
from cilia.proxy.envoy.process import EnvoyProcess
from cilia.proxy.records import Counters, CountsHook, L7Record, Verdict

log = logging.getLogger(__name__)

_STAT = re.compile(r"^(?P<name>\S+): (?P<value>.*)$")
READ_SIZE = 1 << 20
"""Bytes per read of the access log: a burst is taken in a few large reads."""


class EnvoyConfigError(RuntimeError):
    """Envoy refused a configuration; the previous one keeps serving."""


def _write_atomic(path: Path, data: Any) -> None:
    """Write JSON next to `path` and rename it into place (what the directory watch expects)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _address(text: str) -> tuple[str, int]:
    """Envoy's 'a.b.c.d:port' or '[x::y]:port' as (address, port)."""
    host, _, port = text.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port) if port.isdigit() else 0


class EnvoyProxy:
    """Supervises one Envoy and programs its HTTP listeners through filesystem xDS.

    Every logged request is counted per listener (`counters`) and reported in
    batches to `on_counts`; `on_request` gets one record per request only while
    `wants_records()` (decoding each line costs far more than counting it).
    `identity_of(ip)` names the peer of each record (the source on ingress, the
    original destination on egress).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        identity_of: Callable[[str], int] = lambda _ip: 0,
        on_request: Callable[[L7Record], None] | None = None,
        on_counts: CountsHook | None = None,
        wants_records: Callable[[], bool] = lambda: True,
        binary: str | None = None,
        concurrency: int = 2,
        log_level: str = "warning",
    ) -> None:
        self.settings = settings
        self.identity_of = identity_of
        self.on_request = on_request
        self.on_counts = on_counts
        self.wants_records = wants_records
        self.process = EnvoyProcess(
            settings.directory / "bootstrap.json",
            settings.admin_socket,
            binary=binary,
            concurrency=concurrency,
            log_level=log_level,
        )
        self.counters: dict[str, Counters] = {}
        self._listeners: dict[str, HttpListener] = {}
        self._ipcache: dict[str, int] = {}
        self._version = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tail: threading.Thread | None = None

    @property
    def restarts(self) -> int:
        return self.process.restarts

    def start(self, timeout: float = 60.0) -> None:
        """Write the bootstrap and empty xDS files, start Envoy and the access-log reader."""
        s = self.settings
        s.directory.mkdir(parents=True, exist_ok=True)
        s.access_log.touch()
        _write_atomic(s.directory / "bootstrap.json", cfg.bootstrap(s))
        _write_atomic(s.xds_path("cds"), cfg.discovery("0", cfg.clusters(s, [])))
        _write_atomic(s.xds_path("lds"), cfg.discovery("0", []))
        self._start_reader()
        self.process.start(timeout)

    def stop(self) -> None:
        self._stop.set()
        self.process.stop()
        if self._tail is not None:
            self._tail.join(5)

    def validate(self, listeners: Iterable[HttpListener], ipcache: Mapping[str, int]) -> None:
        """Check a configuration with `envoy --mode validate`; raises EnvoyConfigError."""
        fd, path = tempfile.mkstemp(
            prefix=".validate-", suffix=".json", dir=self.settings.directory
        )
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(cfg.static_bootstrap(self.settings, listeners, ipcache), f)
            argv = [self.process.binary, "--mode", "validate", "-c", path, "--disable-hot-restart"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        finally:
            os.unlink(path)
        if done.returncode != 0:
            lines = (done.stderr + done.stdout).strip().splitlines()
            raise EnvoyConfigError(
                "envoy rejected the configuration: " + (lines[-1] if lines else "?")
            )

    def apply(
        self,
        listeners: Iterable[HttpListener],
        ipcache: Mapping[str, int],
        *,
        validate: bool = True,
        timeout: float = 60.0,
    ) -> None:
        """Make Envoy serve exactly `listeners`; returns once Envoy acknowledged every file.

        Raises EnvoyConfigError if validation fails (nothing written) or Envoy
        rejects an update (it keeps serving what it had).
        """
        lsts = sorted(listeners, key=lambda lst: lst.name)
        with self._lock:
            if validate:
                self.validate(lsts, ipcache)
            try:
                self._write(lsts, ipcache, timeout)
            except EnvoyConfigError:
                # put the last accepted files back, so a restarted Envoy starts from them
                self._write(list(self._listeners.values()), self._ipcache, timeout)
                raise
            for gone in set(self._listeners) - {lst.name for lst in lsts}:
                self.settings.xds_path(f"rds-{gone}").unlink(missing_ok=True)
            self._listeners = {lst.name: lst for lst in lsts}
            self._ipcache = dict(ipcache)
            for lst in lsts:
                self.counters.setdefault(lst.name, Counters())

    def _write(self, lsts: list[HttpListener], ipcache: Mapping[str, int], timeout: float) -> None:
        self._version += 1
        version = f"cilia-{self._version}"
        before = self._rejections()
        s = self.settings
        _write_atomic(s.xds_path("cds"), cfg.discovery(version, cfg.clusters(s, lsts)))
        for lst in lsts:
            route = cfg.route(lst, ipcache)
            _write_atomic(s.xds_path(f"rds-{lst.name}"), cfg.discovery(version, [route]))
        resources = [cfg.listener(s, lst) for lst in lsts]
        _write_atomic(s.xds_path("lds"), cfg.discovery(version, resources))
        self._wait_applied(version, [lst.name for lst in lsts], before, timeout)

    def stats(self, pattern: str = "") -> dict[str, str]:
        """Admin statistics (counters, gauges and text readouts) whose names match `pattern`."""
        out: dict[str, str] = {}
        for line in self.process.admin(f"/stats?filter={pattern}").splitlines():
            m = _STAT.match(line)
            if m:
                out[m["name"]] = m["value"].strip('"')
        return out

    def _rejections(self) -> int:
        stats = self.stats(r"update_rejected$")
        return sum(int(v) for v in stats.values() if v.isdigit())

    def _wait_applied(self, version: str, names: list[str], before: int, timeout: float) -> None:
        wanted = ["listener_manager.lds.version_text", "cluster_manager.cds.version_text"]
        wanted += [f"http.{n}.rds.{n}.version_text" for n in names]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.alive():
                if self._rejections() > before:
                    raise EnvoyConfigError(
                        f"envoy rejected configuration {version}; see {self.process.log_path}"
                    )
                texts = self.stats(r"version_text$")
                if all(texts.get(w) == version for w in wanted):
                    return
            time.sleep(0.05)
        raise EnvoyConfigError(f"envoy did not apply configuration {version} within {timeout}s")

    def _start_reader(self) -> None:
        """Follow the access log from its current end (every line appended from now on)."""
        fd = os.open(self.settings.access_log, os.O_RDONLY)
        os.lseek(fd, 0, os.SEEK_END)
        self._stop.clear()
        self._tail = threading.Thread(
            target=self._read_access_log, args=(fd,), name="envoy-log", daemon=True
        )
        self._tail.start()

    def _read_access_log(self, fd: int) -> None:
        try:
            lines = LineBuffer()
            while not self._stop.is_set():
                chunk = os.read(fd, READ_SIZE)
                if not chunk:
                    self._stop.wait(0.1)
                    continue
                block = lines.feed(chunk)
                if block:
                    self._consume(block)
        finally:
            os.close(fd)

    def _consume(self, block: bytes) -> None:
        """Count a block of complete log lines; records only if somebody wants them."""
        listeners = self._listeners
        totals: dict[Verdict, int] = {}
        for (name, verdict), n in accesslog.tally(block).items():
            if name in listeners:
                self.counters.setdefault(name, Counters()).add(verdict, n)
                totals[verdict] = totals.get(verdict, 0) + n
        if totals and self.on_counts is not None:
            try:
                self.on_counts(totals)
            except Exception:
                log.exception("envoy on_counts hook failed")
        if self.on_request is None or not self.wants_records():
            return
        for entry in accesslog.entries(block):
            lst = listeners.get(entry.get("listener", ""))
            if lst is None:
                continue
            try:
                self.on_request(self._record(lst, entry))
            except Exception:
                log.exception("envoy on_request hook failed")

    def _record(self, lst: HttpListener, entry: dict[str, Any]) -> L7Record:
        source, destination = (
            _address(entry.get("source") or ""),
            _address(entry.get("destination") or ""),
        )
        peer = source if lst.direction is Direction.INGRESS else destination
        status = int(entry["status"]) if str(entry.get("status", "")).isdigit() else None
        return L7Record(
            "http",
            accesslog.verdict_of(entry),
            lst.direction,
            self.identity_of(peer[0]),
            source,
            destination,
            lst.port,
            http_method=entry.get("method"),
            http_path=entry.get("path"),
            http_host=entry.get("host"),
            http_status=status,
        )
