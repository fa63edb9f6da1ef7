"""What the runtimes' label watchers share: two threads and the labels they patched.

One thread follows the runtime's event stream (subscribing before it lists, and
reconnecting with backoff when the daemon goes away), the other resyncs every
`resync_interval` seconds while connected. Each endpoint's labels and name are
given to the owner only when they change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

from cilia.runtime.owner import EndpointOwner, EndpointPatch

log = logging.getLogger(__name__)

RETRY_FIRST = 0.2
RETRY_MAX = 5.0
"""Seconds between reconnection attempts: doubling from RETRY_FIRST up to this."""


class EventWatcher:
    """Life cycle, health and patch bookkeeping of one runtime's label watcher.

    A subclass watches its runtime in `_watch` (subscribe, resync, `_now_connected`,
    then handle events until the stream ends), resyncs in `_resync_now`, wakes a
    blocked stream in `_cancel` and describes itself in `_watching`.
    """

    name = "runtime"

    def __init__(self, socket_path: str, resync_interval: float) -> None:
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
        self._delay = RETRY_FIRST
        self.resyncs = 0

    # -- hooks --------------------------------------------------------------

    def _watch(self) -> None:
        raise NotImplementedError

    def _resync_now(self) -> None:
        raise NotImplementedError

    def _cancel(self, stream: Any) -> None:
        raise NotImplementedError

    def _watching(self) -> str:
        return f"watching events ({len(self._patched)} endpoints labelled)"

    def _describe(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}"

    # -- life cycle -----------------------------------------------------------

    def start(self, owner: EndpointOwner) -> None:
        """Follow the events and resync periodically, each on its thread."""
        if self._threads:
            return
        self._owner = owner
        self._stop.clear()
        for target, what in ((self._follow, "events"), (self._resync_loop, "resync")):
            thread = threading.Thread(target=target, name=f"{self.name}-{what}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop both threads (the event stream is cancelled to wake its reader)."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            with suppress(Exception):
                self._cancel(stream)
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []

    def health(self) -> dict[str, Any]:
        """Connected to the event stream, or the last error."""
        if not self._threads:
            message = "not started"
        elif self._connected:
            message = self._watching()
        else:
            message = self._error or "connecting"
        return {
            "runtime": self.name,
            "endpoint": self.socket_path,
            "healthy": bool(self._threads) and self._connected,
            "message": message,
        }

    # -- work -------------------------------------------------------------------

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch()
                if not self._stop.is_set():
                    self._failed(ConnectionError("the event stream ended"))
            except Exception as exc:  # daemon gone or restarting: retry
                if not self._stop.is_set():
                    self._failed(exc)
            finally:
                self._stream = None
            self._stop.wait(self._delay)
            self._delay = min(self._delay * 2, RETRY_MAX)

    def _now_connected(self) -> None:
        self._connected, self._error, self._delay = True, "", RETRY_FIRST

    def _failed(self, exc: BaseException) -> None:
        self._connected = False
        self._error = self._describe(exc)
        log.warning("%s watcher on %s: %s", self.name, self.socket_path, self._error)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync_interval):
            if self._connected:
                try:
                    self._resync_now()
                except Exception as exc:
                    self._failed(exc)

    def _forget_all_but(self, present: Iterable[str]) -> None:
        """Forget what was patched onto endpoints whose container ids are not present."""
        keep = set(present)
        with self._lock:
            for key in [k for k in self._patched if k.split(":", 1)[1] not in keep]:
                del self._patched[key]

    def _patch(self, key: str, labels: list[str], name: str) -> None:
        """Give the owner an endpoint's labels and name, unless it has them already."""
        assert self._owner is not None
        wanted = (labels, name)
        with self._lock:
            if self._patched.get(key) == wanted:
                return
            try:
                self._owner.endpoint_patch(key, EndpointPatch(labels=labels, name=name))
            except Exception as exc:  # removed meanwhile: the next event or resync
                log.info("%s watcher: %s not patched: %s", self.name, key, exc)
                return
            self._patched[key] = wanted
