"""The `ct-gc` controller: connection-tracking garbage collection with reporting.

Every run deletes expired entries. When the table is a quarter full, non-TCP
entries idle for `ct_gc_non_tcp_idle` seconds go too (workloads making many
DNS lookups would otherwise fill it with 60-second UDP entries), and the next
run comes sooner. A full table (fill above 90 %, or insertions the datapath
had to refuse with drop reason 155) is reported: metric, status and a monitor
agent event.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from cilia.agent.controllers import Controller
from cilia.agent.monitor import Monitor
from cilia.datapath import conntrack
from cilia.datapath.manager import Datapath, boottime

log = logging.getLogger("cilia.ctgc")

DROP_CT_CREATE_FAILED = 155
PRESSURE = 0.25
FULL = 0.9
MIN_INTERVAL = 1.0


@dataclass
class CtGc:
    """State and policy of connection-tracking garbage collection."""

    datapath: Datapath
    monitor: Monitor
    interval: float
    non_tcp_idle: int
    non_tcp_lifetime: int
    controller: Controller | None = None
    last: conntrack.ScanResult = field(default_factory=conntrack.ScanResult)
    last_run: float | None = None
    last_seconds: float = 0.0
    deleted_total: int = 0
    full_total: int = 0
    full: bool = False
    _refused: int = -1

    def _refused_insertions(self) -> int:
        return sum(
            p for (r, _), (p, _) in self.datapath.counters().items() if r == DROP_CT_CREATE_FAILED
        )

    def run(self) -> str:
        """One collection; returns the controller's result line."""
        started, started_wall = time.perf_counter(), time.time()
        keep = max(0, self.non_tcp_lifetime - self.non_tcp_idle)
        res = conntrack.gc_scan(self.datapath.ct, boottime(), keep, PRESSURE)
        self.last_seconds = time.perf_counter() - started
        self.last, self.last_run = res, started_wall
        self.deleted_total += res.deleted
        refused = self._refused_insertions()
        new_refusals = refused - self._refused if self._refused >= 0 else 0
        self._refused = refused
        self.full = res.entries >= FULL * res.max_entries or new_refusals > 0
        pressure = res.entries >= PRESSURE * res.max_entries
        if self.controller is not None:
            self.controller.interval = (
                max(MIN_INTERVAL, self.interval / 8) if pressure or self.full else self.interval
            )
        if self.full:
            self.full_total += 1
            message = (
                f"CT table full: {res.entries}/{res.max_entries} entries, "
                f"{new_refusals} new flows refused (drop reason 155); "
                f"{res.deleted} entries collected"
            )
            log.warning("%s", message)
            self.monitor.agent_event(
                "ct-table-full",
                message,
                entries=res.entries,
                max_entries=res.max_entries,
                refused=new_refusals,
                deleted=res.deleted,
            )
        return (
            f"{res.expired} expired and {res.idle_non_tcp} idle non-TCP entries removed, "
            f"{res.remaining}/{res.max_entries} left"
        )

    def status(self) -> dict[str, Any]:
        """The `conntrack` part of `cilia status`."""
        return {
            "entries": self.last.remaining,
            "max-entries": self.last.max_entries,
            "full": self.full,
            "full-reports": self.full_total,
            "last-gc": self.last_run,  # when the last scan started
            "last-gc-seconds": round(self.last_seconds, 4),
            "last-gc-deleted": self.last.deleted,
            "deleted-total": self.deleted_total,
            "interval-seconds": self.controller.interval if self.controller else self.interval,
        }
