"""Where services are load-balanced besides pods' veths: the node's devices (NodePort
traffic from outside) and the node's own sockets (cgroup hooks: a connect to a
frontend goes to a backend, so the node reaches it as `host`).

Both are attached only while some service needs them, through pinned links (so they
outlive an agent restart like the veths' programs): node devices under
`links/netdev/`, the socket hooks under `links/cgroup/` on the root of the cgroup v2
hierarchy. The socket programs act only for sockets of the agent's own network
namespace (its cookie is in the datapath config).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Mapping
from contextlib import suppress
from pathlib import Path

from pyroute2 import IPRoute

from cilia.datapath import attach, libbpf

NETDEV_HOOKS: attach.Hooks = {
    "ingress": ("cilia_from_netdev", libbpf.BPF_TCX_INGRESS),
    "egress": ("cilia_to_netdev", libbpf.BPF_TCX_EGRESS),
}
SOCKET_HOOKS = {
    "connect4": 10,  # BPF_CGROUP_INET4_CONNECT
    "connect6": 11,
    "sendmsg4": 14,  # BPF_CGROUP_UDP4_SENDMSG
    "sendmsg6": 15,
    "recvmsg4": 19,  # BPF_CGROUP_UDP4_RECVMSG
    "recvmsg6": 20,
}
SO_NETNS_COOKIE = 71  # not in Python's socket module


def netns_cookie() -> int:
    """The kernel's cookie of this thread's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int.from_bytes(raw, "little")


def node_devices(exclude_prefixes: Collection[str]) -> dict[str, tuple[int, list[str]]]:
    """Devices of this namespace carrying addresses, but loopback and those whose
    name starts with one of `exclude_prefixes`: name -> (ifindex, addresses)."""
    out: dict[str, tuple[int, list[str]]] = {}
    with IPRoute() as ipr:
        names = {int(link["index"]): link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr():
            ip = a.get_attr("IFA_ADDRESS")
            name = names.get(int(a["index"]), "")
            if not ip or not name or name == "lo" or ip.startswith("fe80:"):
                continue
            if any(name.startswith(p) for p in exclude_prefixes):
                continue
            out.setdefault(name, (int(a["index"]), []))[1].append(ip)
    return out


def sync_node_devices(links_dir: Path, wanted: Mapping[str, int], prog_fds: dict[str, int]) -> None:
    """Attach the NodePort programs to exactly the `wanted` devices (name -> ifindex)."""
    netdev = links_dir / "netdev"
    for name, ifindex in wanted.items():
        if not attach.is_attached(netdev, name, ifindex, NETDEV_HOOKS):
            attach.attach_device(netdev, name, ifindex, prog_fds, NETDEV_HOOKS)
    for name in attach.pinned_devices(netdev):
        if name not in wanted:
            attach.detach_device(netdev, name, NETDEV_HOOKS)


def update_node_devices(links_dir: Path, prog_fds: dict[str, int]) -> None:
    """After a reload: swap the new programs into the pinned NodePort links."""
    netdev = links_dir / "netdev"
    for name, ifindex in attach.pinned_devices(netdev).items():
        if ifindex:
            attach.attach_device(netdev, name, ifindex, prog_fds, NETDEV_HOOKS)


def cgroup2_root() -> Path | None:
    """Mount point of the cgroup v2 hierarchy (None when there is none)."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    return None


def attach_socket_hooks(links_dir: Path, prog_fds: dict[str, int], cgroup: Path) -> None:
    """Attach (or update) the socket load-balancing programs on `cgroup`."""
    pins = links_dir / "cgroup"
    pins.mkdir(parents=True, exist_ok=True)
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for hook, attach_type in SOCKET_HOOKS.items():
            prog = prog_fds[f"cilia_sock_{hook}"]
            pin = pins / hook
            if pin.exists():
                link = libbpf.obj_get(str(pin))
                try:
                    libbpf.link_update(link, prog)
                finally:
                    os.close(link)
                continue
            link = libbpf.link_create(prog, fd, attach_type)
            try:
                libbpf.obj_pin(link, str(pin))
            finally:
                os.close(link)
    finally:
        os.close(fd)


def socket_hooks_attached(links_dir: Path) -> bool:
    """Are the socket hooks pinned?"""
    return all((links_dir / "cgroup" / hook).exists() for hook in SOCKET_HOOKS)


def detach_socket_hooks(links_dir: Path) -> None:
    """Remove the socket hooks' pins (the programs detach with the last reference)."""
    for hook in SOCKET_HOOKS:
        with suppress(FileNotFoundError):
            (links_dir / "cgroup" / hook).unlink()
