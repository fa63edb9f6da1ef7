"""Socket options shared by the proxies: transparent listeners, TCP keepalive, marks."""

from __future__ import annotations

import socket
from dataclasses import dataclass

IP_TRANSPARENT = 19  # linux/in.h
"""Lets a socket accept connections to (and bind) non-local addresses, for redirected flows."""


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


def listener(host: str, port: int, *, transparent: bool, backlog: int = 512) -> socket.socket:
    """A listening TCP socket; `transparent` sets IP_TRANSPARENT for redirected connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if transparent:
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
