"""Coalescing trigger: many requests from watch threads, one run at a time on a worker."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("cilia.trigger")


class Trigger:
    """Runs `fn(reasons)` on its own thread after `fire()`; requests that arrive while it
    runs are merged into the next run, so a burst of watch events costs one or two runs."""

    def __init__(self, name: str, fn: Callable[[list[str]], None]) -> None:
        self.name = name
        self._fn = fn
        self._reasons: list[str] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.last_error = ""

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def fire(self, reason: str) -> None:
        """Ask for a run (returns at once)."""
        with self._cond:
            if reason not in self._reasons:
                self._reasons.append(reason)
            self._cond.notify()

    def stop(self) -> None:
        """Stop the worker after its current run."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._reasons and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                reasons, self._reasons = self._reasons, []
            try:
                self._fn(reasons)
                self.runs += 1
                self.last_error = ""
            except Exception as exc:  # reported, and retried on the next request
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s failed", self.name)
