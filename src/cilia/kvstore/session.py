"""The node's etcd lease: every key the node owns lives under it and dies with it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cilia.kvstore.client import Backoff, Etcd, KvstoreError

log = logging.getLogger("cilia.kvstore")

LeaseCallback = Callable[[int], None]


class NodeSession:
    """Grants the node's lease and refreshes it every `keepalive_interval` seconds.

    When a refresh finds the lease gone (it expired while etcd was unreachable, or the
    store's data was lost) a new lease is granted and every `on_new_lease` callback is
    called with its id, on the session's thread, so that owners publish their keys
    again. Callbacks are also called when the first lease could only be granted after
    `start()` (etcd was unreachable then). Unreachable etcd is retried with backoff and
    never raised into the caller; `status()` reports it.
    """

    def __init__(self, etcd: Etcd, ttl: int, keepalive_interval: float) -> None:
        if keepalive_interval >= ttl:
            raise ValueError("the keepalive interval must be shorter than the lease TTL")
        self.etcd = etcd
        self.ttl = ttl
        self.keepalive_interval = keepalive_interval
        self._backoff = Backoff(min(0.5, keepalive_interval), min(5.0, keepalive_interval))
        self._cond = threading.Condition()
        self._lease = 0
        self._remaining = 0
        self._last_refresh = 0.0
        self._last_error = ""
        self._callbacks: list[LeaseCallback] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lease(self) -> int:
        """The current lease id (0 while none is held)."""
        return self._lease

    def on_new_lease(self, callback: LeaseCallback) -> None:
        """Call `callback(lease_id)` whenever a replacement lease has been granted."""
        with self._cond:
            self._callbacks.append(callback)

    def start(self) -> None:
        """Grant the lease (if etcd answers) and start refreshing it."""
        if self._thread is not None:
            return
        self._grant()
        self._thread = threading.Thread(target=self._run, name="etcd lease", daemon=True)
        self._thread.start()

    def wait_for_lease(self, timeout: float, replacing: int = 0) -> int:
        """The current lease (other than `replacing`), waiting up to `timeout` for one;
        0 if there is none."""
        with self._cond:
            self._cond.wait_for(lambda: self._lease not in (0, replacing), timeout)
            return self._lease if self._lease != replacing else 0

    def lease_lost(self, lease: int) -> None:
        """A write found `lease` gone: check and replace it now rather than at the next
        refresh."""
        with self._cond:
            if lease != self._lease or lease == 0:
                return
        self._wake.set()

    def stop(self, revoke: bool) -> None:
        """Stop refreshing; with `revoke` the node's keys vanish now, else at TTL."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout=self.etcd.timeout * 2)
        self._thread = None
        lease = self._lease
        if revoke and lease:
            try:
                self.etcd.revoke(lease)
            except KvstoreError as exc:
                log.warning("could not revoke lease %x: %s (its keys expire at TTL)", lease, exc)
        with self._cond:
            self._lease = 0

    def status(self) -> dict[str, Any]:
        """Lease id, TTL, last refresh (epoch seconds), healthy and the last error."""
        with self._cond:
            return {
                "lease": self._lease,
                "lease_hex": f"{self._lease:x}",
                "ttl": self.ttl,
                "remaining": self._remaining,
                "last_refresh": self._last_refresh,
                "healthy": self._lease != 0 and not self._last_error,
                "last_error": self._last_error,
            }

    # -- the refresh loop ----------------------------------------------------

    def _grant(self) -> bool:
        try:
            lease = self.etcd.grant(self.ttl)
        except KvstoreError as exc:
            self._failed(f"lease grant failed: {exc}")
            return False
        with self._cond:
            self._lease = lease
            self._remaining = self.ttl
            self._last_refresh = time.time()
            self._last_error = ""
            self._cond.notify_all()
        log.info("etcd lease %x granted (ttl %ds)", lease, self.ttl)
        return True

    def _failed(self, error: str) -> None:
        with self._cond:
            if error != self._last_error:
                log.warning("%s", error)
            self._last_error = error

    def _refresh(self) -> bool:
        """Keep the lease alive, replacing it when gone; False when etcd failed."""
        lease = self._lease
        if lease:
            try:
                remaining = self.etcd.keepalive(lease)
            except KvstoreError as exc:
                self._failed(f"lease keepalive failed: {exc}")
                return False
            if remaining > 0:
                with self._cond:
                    self._remaining = remaining
                    self._last_refresh = time.time()
                    self._last_error = ""
                return True
            log.warning("etcd lease %x is gone; granting a new one", lease)
            with self._cond:
                self._lease = 0
        if not self._grant():
            return False
        self._notify(self._lease)
        return True

    def _notify(self, lease: int) -> None:
        with self._cond:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(lease)
            except Exception:
                log.exception("new-lease callback failed")

    def _run(self) -> None:
        delay = self.keepalive_interval if self._lease else 0.0
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._refresh():
                self._backoff.reset()
                delay = self.keepalive_interval
            else:
                delay = self._backoff.next()
