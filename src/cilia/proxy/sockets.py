"""Socket options shared by the proxies: transparent listeners, TCP keepalive, marks."""

from __future__ import annotations

import socket
from dataclasses import dataclass

IP_TRANSPARENT = 19  # linux/in.h
"""Lets a socket accept connections to (and bind) non-local addresses, for redirected flows."""
IPV6_TRANSPARENT = 75  # linux/in6.h, the same for IPv6 sockets

ANY = "0.0.0.0"
"""The wildcard bind of the proxies: it stands for both families' wildcards (`listen_hosts`)."""


@dataclass(frozen=True)
class KeepAlive:
    """TCP keepalive timing (seconds): idle before the first probe, between probes, probe count."""

    idle: int = 60
    interval: int = 10
    count: int = 5


def set_keepalive(sock: socket.socket, ka: KeepAlive) -> None:
    """Enable TCP keepalive so idle long-lived flows keep their conntrack entries."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, ka.idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, ka.interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, ka.count)


def family_of(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 address, else AF_INET."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listen_hosts(bind: str) -> tuple[str, ...]:
    """Where a proxy bound to `bind` listens: `ANY` is one socket per family, so every
    peer address is seen in its own family (no IPv4-mapped IPv6 addresses)."""
    return (ANY, "::") if bind == ANY else (bind,)


def listener(host: str, port: int, *, transparent: bool, backlog: int = 512) -> socket.socket:
    """A listening TCP socket of the host's family (IPv6: IPv6 only); `transparent` sets
    IP(V6)_TRANSPARENT for redirected connections."""
    family = family_of(host)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if transparent:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        elif transparent:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and port allocation)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port
