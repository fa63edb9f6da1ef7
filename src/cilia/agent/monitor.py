"""Fan-out of datapath, agent and L7 events to `cilia monitor` subscribers.

One thread reads the datapath's ring buffer and never waits for a subscriber:
each subscriber has a bounded queue, and an event that does not fit is counted
as lost for that subscriber (and reported to it as a `lost` record). Events
the datapath could not put into a full ring buffer are counted by the kernel
and reported to every subscriber the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cilia.datapath.events import BootClock, LostCounter, RingBuffer, decode

log = logging.getLogger("cilia.monitor")

EVENT_TYPES = ("drop", "trace", "l7", "agent")
DEFAULT_QUEUE = 65536


@dataclass(frozen=True)
class Filter:
    """What one subscriber wants: types, an endpoint, source/destination identity."""

    types: frozenset[str] = frozenset(EVENT_TYPES)
    related_to: int | None = None
    from_identity: int | None = None
    to_identity: int | None = None

    def matches(self, ev: dict[str, Any]) -> bool:
        """Does an event pass this filter?"""
        if ev.get("type") not in self.types:
            return False
        if self.related_to is not None and ev.get("endpoint") != self.related_to:
            return False
        if self.from_identity is not None and ev.get("src-identity") != self.from_identity:
            return False
        return self.to_identity is None or ev.get("dst-identity") == self.to_identity


@dataclass(eq=False)
class Subscriber:
    """A bounded queue of events for one client; filled from any thread, read on its loop."""

    filter: Filter
    loop: asyncio.AbstractEventLoop
    maxlen: int = DEFAULT_QUEUE
    delivered: int = 0
    lost: int = 0
    datapath_lost: int = 0
    _reported_lost: int = 0
    _reported_dp_lost: int = 0
    _items: deque[dict[str, Any]] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _waiting: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, ev: dict[str, Any]) -> None:
        """Queue an event, or count it lost when the queue is full (never blocks)."""
        with self._lock:
            if len(self._items) >= self.maxlen:
                self.lost += 1
                return
            self._items.append(ev)
            notify, self._waiting = self._waiting, False
        if notify:
            self.loop.call_soon_threadsafe(self._wake.set)

    def note_datapath_lost(self, count: int) -> None:
        """The datapath lost `count` events to a full ring buffer."""
        with self._lock:
            self.datapath_lost += count
            notify, self._waiting = self._waiting, False
        if notify:
            self.loop.call_soon_threadsafe(self._wake.set)

    def _take(self) -> list[dict[str, Any]]:
        batch = list(self._items)
        self._items.clear()
        self.delivered += len(batch)
        for source, total, seen in (
            ("monitor", self.lost, self._reported_lost),
            ("datapath", self.datapath_lost, self._reported_dp_lost),
        ):
            if total > seen:
                batch.append(
                    {"type": "lost", "source": source, "count": total - seen, "time": time.time()}
                )
        self._reported_lost, self._reported_dp_lost = self.lost, self.datapath_lost
        return batch

    async def next_batch(self, timeout: float) -> list[dict[str, Any]]:
        """Every queued event (plus `lost` records), waiting up to timeout for one."""
        with self._lock:
            batch = self._take()
            if batch:
                return batch
            self._waiting = True
            self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        with self._lock:
            self._waiting = False
            return self._take()


class Monitor:
    """The event hub of one agent."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE) -> None:
        self.queue_size = queue_size
        self._subs: list[Subscriber] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pins = ("", "")
        self.reader_restarts = 0
        self.datapath_events = 0
        self._gone_delivered = 0
        self._gone_lost = 0
        self.datapath_lost = (0, 0)
        self.last_event: dict[str, float] = {}
        self.endpoint_name: Callable[[int], str | None] = lambda _: None

    # -- subscribers ------------------------------------------------------

    def subscribe(self, flt: Filter, loop: asyncio.AbstractEventLoop) -> Subscriber:
        """Register a subscriber (call on its event loop)."""
        sub = Subscriber(flt, loop, self.queue_size)
        with self._lock:
            self._subs = [*self._subs, sub]
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a subscriber."""
        with self._lock:
            self._subs = [s for s in self._subs if s is not sub]
            self._gone_delivered += sub.delivered
            self._gone_lost += sub.lost

    def subscribers(self) -> list[Subscriber]:
        """Current subscribers (a snapshot)."""
        return self._subs

    def wants(self, ev_type: str) -> bool:
        """Does any subscriber take events of this type (worth building them)?"""
        return any(ev_type in sub.filter.types for sub in self._subs)

    def seen(self, source: str) -> None:
        """Note that events of `source` happened, published or not (cilia_event_ts)."""
        self.last_event[source] = time.time()

    def publish(self, ev: dict[str, Any]) -> None:
        """Hand an event (a JSON-able dict with a `type`) to every interested subscriber.

        The public entry point for agent and L7 events; safe from any thread.
        """
        ev.setdefault("time", time.time())
        source = "datapath" if ev["type"] in ("drop", "trace") else ev["type"]
        self.last_event[source] = ev["time"]
        for sub in self._subs:
            if sub.filter.matches(ev):
                sub.offer(ev)

    def agent_event(self, subtype: str, message: str, **fields: Any) -> None:
        """Publish an agent event (policy change, endpoint life cycle, identity...)."""
        self.publish({"type": "agent", "subtype": subtype, "message": message, **fields})

    def status(self) -> dict[str, Any]:
        """Counters for `cilia status`."""
        subs = self._subs
        return {
            "subscribers": len(subs),
            "datapath-events": self.datapath_events,
            "datapath-lost": {"drop": self.datapath_lost[0], "trace": self.datapath_lost[1]},
            "delivered": self._gone_delivered + sum(s.delivered for s in subs),
            "queue-lost": self._gone_lost + sum(s.lost for s in subs),
        }

    # -- datapath reader ----------------------------------------------------

    def start_reader(self, events_pin: str, lost_pin: str) -> None:
        """Start the thread that drains the datapath's ring buffer."""
        self._pins = (events_pin, lost_pin)
        ring = RingBuffer(events_pin)
        lost = LostCounter(lost_pin)
        self.datapath_lost = lost.read()
        self._thread = threading.Thread(
            target=self._read_loop, args=(ring, lost), name="monitor-reader", daemon=True
        )
        self._thread.start()

    def supervise_reader(self) -> str:
        """Controller: restart the ring-buffer reader if it died (and fail this run)."""
        if self._thread is None or self._thread.is_alive() or self._stop.is_set():
            return f"reading: {self.datapath_events} datapath events"
        self.reader_restarts += 1
        self.start_reader(*self._pins)
        raise RuntimeError(f"monitor reader had died (restart {self.reader_restarts}); restarted")

    def stop(self) -> None:
        """Stop the reader thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _read_loop(self, ring: RingBuffer, lost: LostCounter) -> None:
        clock = BootClock()
        next_lost_check = 0.0
        try:
            while not self._stop.is_set():
                ring.wait(0.2)
                raws = ring.drain()
                self.datapath_events += len(raws)
                if raws and self._subs:
                    self._publish_raw(raws, clock)
                now = time.monotonic()
                if now >= next_lost_check:
                    next_lost_check = now + 0.25
                    self._check_lost(lost)
        except Exception:
            log.exception("monitor reader failed")  # the monitor-reader controller restarts it
        finally:
            ring.close()
            lost.close()

    def _publish_raw(self, raws: list[bytes], clock: BootClock) -> None:
        name = self.endpoint_name
        for raw in raws:
            ev = decode(raw, clock)
            pod = name(ev["endpoint"])
            if pod is not None:
                ev["pod"] = pod
            self.publish(ev)

    def _check_lost(self, lost: LostCounter) -> None:
        now = lost.read()
        new = sum(now) - sum(self.datapath_lost)
        self.datapath_lost = now
        if new > 0:
            log.warning("monitor: the datapath lost %d events to a full ring buffer", new)
            for sub in self._subs:
                sub.note_datapath_lost(new)
