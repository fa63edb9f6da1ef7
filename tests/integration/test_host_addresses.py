"""Host IP changes: netlink announces them, the ipcache follows at once (legacy mode
makes node addresses host), and pods reach any node address through the router."""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.runtime.probe import probe
from tests.integration.harness import Cilia, running_agent

pytestmark = pytest.mark.integration

IP_FREEBIND = 15
POD = """
apiVersion: v1
kind: Pod
metadata: {name: talker, namespace: default}
spec:
  containers: [{name: c, command: [sleep, "600"]}]
"""


@pytest.fixture
def node_address() -> Iterator[str]:
    """A test address for the node's `lo` (this kernel has no dummy devices), removed
    at the end if a test added it."""
    address = f"198.18.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    try:
        yield address
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True)


def _address(action: str, address: str) -> None:
    subprocess.run(["ip", "addr", action, f"{address}/32", "dev", "lo"], check=True)


def _answer(server: socket.socket) -> None:
    """Answer every connection as an HTTP server would (what `probe` waits for)."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:  # closed: the test is over
            return
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def _ipcache(cilia: Cilia) -> dict[str, int]:
    return {r["prefix"]: r["identity"] for r in cilia.client.request("GET", "/bpf/ipcache")}


def _wait(check: object, timeout: float = 5.0) -> bool:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def test_legacy_mode_ipcache_follows_node_addresses(tmp_path: Path, node_address: str) -> None:
    address = node_address
    with running_agent(tmp_path, CILIA_LEGACY_HOST_ALLOWS_WORLD="true") as cilia:
        assert f"{address}/32" not in _ipcache(cilia)
        _address("add", address)
        started = time.monotonic()
        assert _wait(lambda: _ipcache(cilia).get(f"{address}/32") == 1), "not host"
        assert time.monotonic() - started < 2.0, "followed by polling, not netlink"
        _address("del", address)
        assert _wait(lambda: f"{address}/32" not in _ipcache(cilia)), "removed address kept"
        log = cilia.config.log_file.read_text()
        assert f"host address {address} added" in log


def test_pod_reaches_an_address_added_to_the_node(tmp_path: Path, node_address: str) -> None:
    address = node_address
    with running_agent(tmp_path) as cilia:
        cilia.apply(POD)
        netns = cilia.client.request("GET", "/pods/default/talker/netns")["netns"]

        def reaches() -> bool:
            return asyncio.run(probe(netns, address, port, "TCP", 0.5)).result == "allowed"

        server = socket.socket()
        server.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)  # the address comes later
        server.bind((address, 0))
        port = server.getsockname()[1]
        server.listen()
        threading.Thread(target=_answer, args=(server,), daemon=True).start()
        try:
            _address("add", address)
            assert _wait(reaches), "the pod does not reach the node's new address"
        finally:
            server.close()
            cilia.delete(POD)
