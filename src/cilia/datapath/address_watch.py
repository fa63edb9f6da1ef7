"""Changes of the node's IPv4 and IPv6 addresses, as netlink announces them (no polling)."""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR

log = logging.getLogger("cilia.datapath")

EVENTS = {"RTM_NEWADDR": "added", "RTM_DELADDR": "removed"}


class AddressWatch:
    """Calls `on_change(reason)` on its own thread for every address (IPv4, or IPv6
    but link-local) added to or removed from a device of the host namespace."""

    def __init__(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Subscribe (before returning, so no later change is missed) and start."""
        self._wake_r, self._wake_w = os.pipe()
        subscribed = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(subscribed,), name="address-watch", daemon=True
        )
        self._thread.start()
        if not subscribed.wait(10):
            raise RuntimeError("no netlink subscription to address changes")

    def stop(self) -> None:
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")  # wakes the select: closing under a reader may hang
        self._thread.join(5)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._thread = None

    def _run(self, subscribed: threading.Event) -> None:
        # pyroute2 drives its socket from the thread that made it: all of it runs here
        with IPRoute() as ipr:
            ipr.bind(groups=RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
            subscribed.set()
            while True:
                readable, _, _ = select.select([ipr.fileno(), self._wake_r], [], [])
                if self._wake_r in readable:
                    return
                try:
                    messages = ipr.get()
                except OSError as exc:  # a broken socket ends the watch, loudly
                    log.error("address watch stopped: %s", exc)
                    return
                for msg in messages:
                    event = EVENTS.get(str(msg.get("event")))
                    address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                    if event and address and not str(address).startswith("fe80:"):
                        self._on_change(f"host address {address} {event}")
