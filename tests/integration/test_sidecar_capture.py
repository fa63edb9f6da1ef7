"""Istio's capture rules, loaded in a namespace of the test's own: outbound TCP goes
to the sidecar's 15001, the sidecar's own (UID 1337) and excluded ports do not, and
removing the capture leaves the namespace's nat table empty."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator

import pytest

from cilia.datapath.netns import create_netns, delete_netns, netns_path, setns, socket_in_netns
from cilia.datapath.sidecar_capture import install_capture, remove_capture
from cilia.k8s.manifests import Pod, parse_manifest
from cilia.proxy.sidecar.capture import capture_rules
from cilia.proxy.sidecar.injection import EXCLUDE_OUTBOUND, INJECT, sidecar_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"cilia-cap-{secrets.token_hex(3)}"
    create_netns(name)
    path = netns_path(name)
    try:
        for cmd in (
            "ip link set lo up",
            "ip link add d0 type veth peer name d1",  # no dummy module on this kernel
            "ip link set d0 up",
            "ip link set d1 up",
            "ip addr add 10.99.0.1/24 dev d0",
            "ip route add default via 10.99.0.2",
        ):
            subprocess.run(["nsenter", f"--net={path}", *cmd.split()], check=True)
        yield path
    finally:
        delete_netns(name)


def _pod() -> Pod:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": {INJECT: "true", EXCLUDE_OUTBOUND: "5432"}},
        "spec": {"containers": [{"name": "c"}]},
    }
    pod = parse_manifest(doc)
    assert isinstance(pod, Pod)
    return pod


def _captured(netns: str, port: int, uid: int | None = None) -> bool:
    """Does a connect to 192.0.2.1:port from the namespace reach the local 15001?"""
    with socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("0.0.0.0", 15001))
        listener.listen()
        pid = os.fork()
        if pid == 0:  # the client, as `uid` when given
            code = 1
            try:
                with setns(netns):
                    if uid is not None:
                        os.setuid(uid)
                    with socket.create_connection(("192.0.2.1", port), timeout=0.5):
                        code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) == 0


def _nat_rules(netns: str) -> list[str]:
    out = subprocess.run(
        ["nsenter", f"--net={netns}", "iptables", "-t", "nat", "-S"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    return [line for line in out if not line.startswith("-P ")]


def test_outbound_tcp_is_captured_but_the_sidecar_and_excluded_ports(netns: str) -> None:
    settings = sidecar_settings(_pod(), {}, {})
    assert settings is not None
    assert not _captured(netns, 80), "no capture yet: the SYN leaves for nowhere"
    install_capture(netns, capture_rules(settings))
    try:
        assert _captured(netns, 80), "outbound TCP goes to the sidecar's 15001"
        assert not _captured(netns, 80, uid=1337), "the sidecar's own traffic is not"
        assert not _captured(netns, 5432), "nor an excluded port"
    finally:
        remove_capture(netns)
    assert _nat_rules(netns) == []
    assert not _captured(netns, 80)
