"""Named, recurring jobs with their last outcome (shown by `cilia status`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("cilia.controllers")


@dataclass
class Controller:
    """A job run every `interval` seconds; a failure is retried on the next tick."""

    name: str
    interval: float
    fn: Callable[[], str]
    runs: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_success: float | None = None
    last_failure: float | None = None
    last_error: str | None = None
    last_result: str | None = None
    next_run: float = field(default=0.0)

    def run(self) -> None:
        """Run once and record the outcome."""
        self.runs += 1
        try:
            self.last_result = self.fn()
            self.last_success = time.time()
            self.consecutive_failures = 0
        except Exception as exc:
            self.failures += 1
            self.consecutive_failures += 1
            self.last_failure = time.time()
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("controller %s failed", self.name)
        self.next_run = time.monotonic() + self.interval

    def to_api(self) -> dict[str, Any]:
        """The REST representation."""
        return {
            "name": self.name,
            "interval-seconds": self.interval,
            "runs": self.runs,
            "failures": self.failures,
            "consecutive-failures": self.consecutive_failures,
            "last-success": self.last_success,
            "last-failure": self.last_failure,
            "last-error": self.last_error,
            "last-result": self.last_result,
        }


class ControllerManager:
    """Runs controllers on one background thread."""

    def __init__(self) -> None:
        self._controllers: dict[str, Controller] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, interval: float, fn: Callable[[], str]) -> Controller:
        """Register a controller; its first run is one interval from now."""
        c = Controller(name, interval, fn, next_run=time.monotonic() + interval)
        self._controllers[name] = c
        return c

    def remove(self, name: str) -> None:
        """Forget a controller (it is not run again)."""
        self._controllers.pop(name, None)

    def start(self) -> None:
        """Start the scheduling thread."""
        self._thread = threading.Thread(target=self._loop, name="controllers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the scheduling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for c in list(self._controllers.values()):
                if c.next_run <= now:
                    c.run()
            self._stop.wait(0.2)

    def all(self) -> list[Controller]:
        """Every controller."""
        return list(self._controllers.values())

    def failing(self) -> list[Controller]:
        """Controllers whose last run failed."""
        return [c for c in self._controllers.values() if c.consecutive_failures > 0]
