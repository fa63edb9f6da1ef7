"""Helpers of the monitor, conntrack and metrics tests: a `cilia monitor` client
running in the background, UDP senders inside pods, condition waits."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from cilia.datapath.netns import setns
from tests.integration.harness import Cilia
from tests.integration.test_enforcement import DS as DS
from tests.integration.test_enforcement import RULE1 as STARWARS_RULE1
from tests.integration.test_enforcement import STARWARS
from tests.integration.test_enforcement import TF as TF
from tests.integration.test_enforcement import XW as XW

PODS = STARWARS

# rule1 of the Star Wars demo, on 80/TCP and 80/UDP.
RULE1 = STARWARS_RULE1.replace("protocol: TCP", "protocol: ANY")


def wait_until(cond: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll cond() until it returns something truthy; fail after a generous deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class MonitorProc:
    """`cilia monitor -o json ARGS` in the background, its events collected."""

    def __init__(self, cilia: Cilia, *args: str) -> None:
        self.cilia = cilia
        before = self._subscribers()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cilia.cli.main", "monitor", "-o", "json", *args],
            env=cilia.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(lambda: self._subscribers() > before, "the monitor to subscribe")

    def _subscribers(self) -> int:
        return int(self.cilia.client.get("/status")["monitor"]["subscribers"])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first event matching, waiting for it."""
        return dict(
            wait_until(lambda: next((e for e in self.events if match(e)), None), what, timeout)
        )

    def stop(self) -> None:
        """Terminate the client (by its PID)."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)


def http_get(sock: socket.socket, host: str) -> bytes:
    """One GET on a connected socket; the first bytes of the answer."""
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock.recv(4096)


def pod_netns(cilia: Cilia, pod: str) -> str:
    """Path of a pod's network namespace."""
    return str(cilia.client.get(f"/pods/{pod}/netns")["netns"])


def send_udp(
    cilia: Cilia, pod: str, dst: str, port: int, *, flows: int = 1, per_flow: int = 1, src: str = ""
) -> None:
    """Send `per_flow` UDP datagrams from each of `flows` new source ports of a pod."""
    with setns(pod_netns(cilia, pod)):
        for _ in range(flows):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((src, 0))
                for _ in range(per_flow):
                    s.sendto(b"x", (dst, port))
