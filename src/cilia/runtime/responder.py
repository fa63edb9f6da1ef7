"""Built-in pod responder: HTTP/1.1 on TCP ports, echo on UDP ports.

``python -m cilia.runtime.responder --pod NS/NAME [--tcp PORT]... [--udp PORT]...``

Listens on IPv4 and IPv6 (one dual-stack socket per port when IPv6 is available).
Kept to the standard library and few imports so it starts quickly. The agent serves
its pods' responders from one process (`cilia.runtime.responders`) with these handlers;
this command runs one on its own (tests use it for outside peers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
from collections.abc import Sequence
from typing import cast

MAX_HEADER = 16384


def listen_socket(kind: int, port: int) -> socket.socket:
    """A non-blocking socket bound to `port` in this thread's network namespace:
    dual-stack, or IPv4 where the namespace has no IPv6; closed again on failure."""
    try:
        sock = socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        addr: tuple[str, int] = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, kind)
        addr = ("0.0.0.0", port)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _response(pod: str, method: str, path: str, port: int, keep_alive: bool) -> bytes:
    body = json.dumps({"pod": pod, "method": method, "path": path, "port": port}).encode()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + (b"" if method == "HEAD" else body)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return
            await reader.readexactly(size + 2)
    length = int(headers.get("content-length", "0") or "0")
    if length:
        await reader.readexactly(length)


async def serve_http(
    pod: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer HTTP/1.x requests on one connection with the pod's JSON until it closes."""
    try:
        while True:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                writer.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n")
                break
            lines = raw.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                break
            method, path, version = parts
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            await _read_body(reader, headers)
            conn = headers.get("connection", "").lower()
            keep = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
            writer.write(_response(pod, method, path, port, keep))
            await writer.drain()
            if not keep:
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


class Echo(asyncio.DatagramProtocol):
    """Sends every datagram back to where it came from."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # 3.11's selector transport does not subclass DatagramTransport: cast, no check.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.transport.sendto(data, addr)


async def serve(pod: str, tcp: Sequence[int], udp: Sequence[int]) -> None:
    """Serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = []
    for port in tcp:
        sock = listen_socket(socket.SOCK_STREAM, port)

        async def handle(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, port: int = port
        ) -> None:
            await serve_http(pod, port, r, w)

        servers.append(await asyncio.start_server(handle, sock=sock, limit=MAX_HEADER))
    for port in udp:
        await loop.create_datagram_endpoint(Echo, sock=listen_socket(socket.SOCK_DGRAM, port))
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cilia.runtime.responder")
    parser.add_argument("--pod", required=True, help="NS/NAME reported in responses")
    parser.add_argument("--tcp", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument("--udp", type=int, action="append", default=[], metavar="PORT")
    args = parser.parse_args(argv)
    for port in [*args.tcp, *args.udp]:
        if not 0 < port < 65536:
            parser.error(f"invalid port {port}")
    asyncio.run(serve(args.pod, args.tcp, args.udp))


if __name__ == "__main__":
    main()
