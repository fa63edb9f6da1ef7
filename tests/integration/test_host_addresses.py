"""Host IP changes: netlink announces them, the ipcache follows at once (legacy mode
makes node addresses host), and pods reach any node address through the router."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import signal
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


def _prefix(address: str) -> str:
    return f"{address}/128" if ":" in address else f"{address}/32"


@pytest.fixture
def node_address() -> Iterator[str]:
    """A test address for the node's `lo` (this kernel has no dummy devices), removed
    at the end if a test added it."""
    address = f"198.18.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    try:
        yield address
    finally:
        subprocess.run(["ip", "addr", "del", _prefix(address), "dev", "lo"], capture_output=True)


@pytest.fixture
def node_address6() -> Iterator[str]:
    """An IPv6 twin of `node_address` (from the documentation prefix)."""
    # Written as the kernel and the ipcache write it (no leading zeros: `0393` is `393`).
    address = str(ipaddress.ip_address(f"2001:db8:{secrets.token_hex(2)}::{secrets.token_hex(2)}"))
    try:
        yield address
    finally:
        subprocess.run(["ip", "addr", "del", _prefix(address), "dev", "lo"], capture_output=True)


def _address(action: str, address: str) -> None:
    nodad = ["nodad"] if ":" in address and action == "add" else []
    subprocess.run(["ip", "addr", action, _prefix(address), "dev", "lo", *nodad], check=True)


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


@pytest.mark.parametrize("family", [4, 6])
def test_legacy_mode_ipcache_follows_node_addresses(
    tmp_path: Path, node_address: str, node_address6: str, family: int
) -> None:
    address = node_address6 if family == 6 else node_address
    prefix = _prefix(address)
    legacy = {"CILIA_LEGACY_HOST_ALLOWS_WORLD": "true"}
    with running_agent(tmp_path, dual_stack=family == 6, **legacy) as cilia:
        assert prefix not in _ipcache(cilia)
        _address("add", address)
        started = time.monotonic()
        assert _wait(lambda: _ipcache(cilia).get(prefix) == 1), "not host"
        assert time.monotonic() - started < 2.0, "followed by polling, not netlink"
        _address("del", address)
        assert _wait(lambda: prefix not in _ipcache(cilia)), "removed address kept"
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


WEB = """
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  containers: [{name: c, ports: [{containerPort: 80}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-host, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEntities: [host], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
"""


def _in_pod(netns: str, *argv: str) -> str:
    done = subprocess.run(
        ["nsenter", f"--net={netns}", *argv], capture_output=True, text=True, check=True
    )
    return done.stdout


def _serving(address: str) -> tuple[socket.socket, int]:
    server = socket.socket()
    server.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    server.bind((address, 0))
    server.listen()
    threading.Thread(target=_answer, args=(server,), daemon=True).start()
    return server, server.getsockname()[1]


def _reaches(netns: str, address: str, port: int) -> bool:
    return asyncio.run(probe(netns, address, port, "TCP", 0.5)).result == "allowed"


def test_arp_requests_of_a_pod_are_answered_with_the_router_mac(tmp_path: Path) -> None:
    """Whatever address a pod asks for (its link-local gateway, another pod's address
    on a route without gateway), the datapath answers with its router's MAC."""
    with running_agent(tmp_path) as cilia:
        cilia.apply(POD + "---\n" + WEB.split("---")[0])
        netns = cilia.client.request("GET", "/pods/default/talker/netns")["netns"]
        talker = cilia.client.request("GET", "/endpoint/default/talker")
        web = cilia.client.request("GET", "/endpoint/default/web")
        router_mac = Path(f"/sys/class/net/{talker['interface']}/address").read_text().strip()
        server, port = _serving(cilia.config.host_router_ip)
        try:
            # The kernel would not answer for 169.254.1.1 (no host address): only the
            # datapath can, once the permanent entry is gone.
            _in_pod(netns, "ip", "neigh", "del", "169.254.1.1", "dev", "eth0")
            assert _wait(lambda: _reaches(netns, cilia.config.host_router_ip, port))
            neigh = _in_pod(netns, "ip", "neigh", "show", "169.254.1.1", "dev", "eth0")
            assert f"lladdr {router_mac}" in neigh, neigh
            # Another pod's address on-link: the request goes to the other pod's IP.
            _in_pod(netns, "ip", "route", "add", f"{web['ipv4']}/32", "dev", "eth0")
            assert _wait(lambda: _reaches(netns, web["ipv4"], 80)), "no answer for a pod IP"
            neigh = _in_pod(netns, "ip", "neigh", "show", web["ipv4"], "dev", "eth0")
            assert f"lladdr {router_mac}" in neigh, neigh
        finally:
            server.close()


def test_router_address_changes_across_a_restart(tmp_path: Path) -> None:
    """`--router-ip` changed on a running node: pods stay, the node's traffic to them
    leaves from the new address (identity host), pods reach the node there."""
    with running_agent(tmp_path) as cilia:
        old = cilia.config.host_router_ip
        new = str(ipaddress.IPv4Network(cilia.config.pod_cidr)[-3])
        host_netns = "/proc/self/ns/net"
        try:
            cilia.apply(POD + "---\n" + WEB)
            web = cilia.client.request("GET", "/endpoint/default/web")
            netns = cilia.client.request("GET", "/pods/default/talker/netns")["netns"]
            assert _reaches(host_netns, web["ipv4"], 80)
            os.kill(int(cilia.config.pid_file.read_text()), signal.SIGTERM)
            assert _wait(lambda: not cilia.config.socket_path.exists(), 20)
            cilia.env["CILIA_ROUTER_IP"] = new
            cilia.start()
            lo = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True)
            assert f" {new}/32 ".encode() in lo.stdout and f" {old}/32 ".encode() not in lo.stdout
            ipc = _ipcache(cilia)
            assert ipc.get(f"{new}/32") == 1 and f"{old}/32" not in ipc
            after = cilia.client.request("GET", "/endpoint/default/web")
            assert (after["id"], after["ifindex"]) == (web["id"], web["ifindex"]), "re-created"
            route = subprocess.run(
                ["ip", "route", "get", web["ipv4"]], capture_output=True, text=True
            ).stdout
            assert f"src {new}" in route, route
            assert _wait(lambda: _reaches(host_netns, web["ipv4"], 80)), "host is not host"
            server, port = _serving(new)
            try:
                assert _wait(lambda: _reaches(netns, new, port)), "pod does not reach the router"
            finally:
                server.close()
            assert "router address changes from" in cilia.config.log_file.read_text()
        finally:
            subprocess.run(["ip", "addr", "del", f"{new}/32", "dev", "lo"], capture_output=True)
