"""Connectivity probes from inside a pod's namespace, many at once on one event loop.

The socket is created in the source namespace (a brief per-thread ``setns``) and then
driven by the event loop like any other socket, so probes need no helper processes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass
from typing import Literal

from cilia.datapath.netns import socket_in_netns

Result = Literal["allowed", "denied"]


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one probe; ``detail`` says why (status line, timeout, refused...)."""

    result: Result
    detail: str
    latency_ms: float


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


async def _tcp(sock: socket.socket, dst_ip: str, port: int) -> tuple[Result, str]:
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (dst_ip, port))
    host = f"[{dst_ip}]" if ":" in dst_ip else dst_ip
    request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    await loop.sock_sendall(sock, request.encode())
    data = b""
    while b"\r\n" not in data:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            return "denied", "closed without a response"
        data += chunk
    status = data.split(b"\r\n", 1)[0].decode("latin-1")
    if status.startswith("HTTP/"):
        return "allowed", status
    return "denied", f"unexpected response {status[:60]!r}"


async def _udp(sock: socket.socket, dst_ip: str, port: int) -> tuple[Result, str]:
    loop = asyncio.get_running_loop()
    sock.connect((dst_ip, port))  # connected: ICMP unreachable surfaces as ECONNREFUSED
    token = os.urandom(8).hex().encode()
    await loop.sock_sendall(sock, b"cilia-probe " + token)
    while True:
        data = await loop.sock_recv(sock, 2048)
        if token in data:
            return "allowed", "echo received"


async def probe(
    src_netns_path: str, dst_ip: str, port: int, protocol: str, timeout: float
) -> ProbeResult:
    """Probe *dst_ip*:*port* over TCP (HTTP status line) or UDP (echo) from a namespace."""
    proto = protocol.upper()
    if proto not in ("TCP", "UDP"):
        raise ValueError(f"unsupported protocol {protocol!r}")
    kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
    start = time.perf_counter()
    sock = socket_in_netns(src_netns_path, _family(dst_ip), kind)
    try:
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            if proto == "TCP":
                result, detail = await _tcp(sock, dst_ip, port)
            else:
                result, detail = await _udp(sock, dst_ip, port)
    except TimeoutError:
        result, detail = "denied", f"timeout after {timeout:g}s"
    except ConnectionRefusedError:
        result, detail = "denied", "refused"
    except ConnectionResetError:
        result, detail = "denied", "reset"
    except OSError as exc:
        result, detail = "denied", exc.strerror or str(exc)
    finally:
        sock.close()
    return ProbeResult(result, detail, (time.perf_counter() - start) * 1000.0)
