"""One process serving the built-in responders of every local pod of a node.

``python -m cilia.runtime.responders --control SOCKET``

A pod's built-in responder is a handful of sockets opened inside the pod's network
namespace (a socket keeps the namespace it was created in), served by this one
asyncio process: a pod costs a few sockets, not an interpreter. The agent drives it
over a unix socket, one JSON request and one JSON answer per connection:

- ``{"op": "start", "key": K, "pod": "NS/NAME", "netns": PATH, "tcp": [..], "udp": [..]}``
  opens the listeners (all or none) and answers once they listen;
- ``{"op": "stop", "key": K}`` closes them and the connections they accepted;
- ``{"op": "list"}`` answers ``{"keys": [...]}``.

`ResponderHost` is the agent's side: it starts the process on first use and keeps
its `ProcessRecord`, so a restarted agent finds the process (and the pods' sockets)
still serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cilia.datapath.netns import setns
from cilia.runtime.processes import ProcessRecord, process_alive, start_process, stop_process
from cilia.runtime.responder import MAX_HEADER, Echo, listen_socket, serve_http
from cilia.runtime.supervisor import ContainerStartError

CONTROL_LIMIT = 65536
"""Largest control request (a pod's ports fit many times over)."""
START_TIMEOUT = 10.0
"""Seconds the process has to answer on its control socket after it starts."""


def _listener(netns: str, kind: int, port: int) -> socket.socket:
    """The stand-alone responder's socket, created inside the namespace at `netns`."""
    with setns(netns):  # nothing awaits in here
        return listen_socket(kind, port)


@dataclass
class _Responder:
    """The listeners of one container and the connections they accepted."""

    servers: list[asyncio.Server] = field(default_factory=list)
    transports: list[asyncio.BaseTransport] = field(default_factory=list)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for transport in self.transports:
            transport.close()
        for writer in list(self.writers):
            writer.close()


class _Host:
    """The serving side: responders by key."""

    def __init__(self) -> None:
        self.responders: dict[str, _Responder] = {}

    async def start(self, key: str, pod: str, netns: str, tcp: list[int], udp: list[int]) -> None:
        self.stop(key)  # a container started again replaces its sockets
        loop = asyncio.get_running_loop()
        responder = _Responder()
        try:
            for port in tcp:
                sock = _listener(netns, socket.SOCK_STREAM, port)

                async def handle(
                    r: asyncio.StreamReader, w: asyncio.StreamWriter, port: int = port
                ) -> None:
                    responder.writers.add(w)
                    try:
                        await serve_http(pod, port, r, w)
                    finally:
                        responder.writers.discard(w)

                try:
                    server = await asyncio.start_server(handle, sock=sock, limit=MAX_HEADER)
                except BaseException:
                    sock.close()
                    raise
                responder.servers.append(server)
            for port in udp:
                sock = _listener(netns, socket.SOCK_DGRAM, port)
                try:
                    transport, _ = await loop.create_datagram_endpoint(Echo, sock=sock)
                except BaseException:
                    sock.close()
                    raise
                responder.transports.append(transport)
        except BaseException:
            responder.close()
            raise
        self.responders[key] = responder

    def stop(self, key: str) -> None:
        responder = self.responders.pop(key, None)
        if responder is not None:
            responder.close()

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "list":
            return {"keys": sorted(self.responders)}
        key = str(request.get("key", ""))
        if op == "stop":
            self.stop(key)
            return {}
        if op == "start":
            tcp, udp = [int(p) for p in request["tcp"]], [int(p) for p in request["udp"]]
            if not all(0 < p < 65536 for p in (*tcp, *udp)):
                raise ValueError(f"invalid port in {tcp + udp}")
            await self.start(key, str(request["pod"]), str(request["netns"]), tcp, udp)
            return {}
        raise ValueError(f"unknown op {op!r}")

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                reply = {"ok": True, **await self.answer(json.loads(line))}
            except (OSError, ValueError, KeyError, TypeError) as exc:
                reply = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()


async def serve(control: Path) -> None:
    """Serve the control socket and every responder until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = _Host()
    control.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(host.control, path=control, limit=CONTROL_LIMIT)
    os.chmod(control, 0o600)
    await stop.wait()
    server.close()
    for key in list(host.responders):
        host.stop(key)


class ResponderError(ContainerStartError):
    """The responder host refused a request or could not be reached."""


class ResponderHost:
    """The agent's handle on its node's responder process."""

    def __init__(self, control: Path, log_path: Path, record: ProcessRecord | None = None):
        self.control = control
        self.log_path = log_path
        self.record = record
        self._serving: set[str] | None = None

    @classmethod
    def of(
        cls, run_dir: Path, state_dir: Path, state: Mapping[str, Any] | None = None
    ) -> ResponderHost:
        """An agent's host: socket in its run directory, log and record in its state."""
        record = (state or {}).get("responder_host")
        return cls(
            run_dir / "responders.sock",
            state_dir / "logs" / "responders.log",
            ProcessRecord.from_dict(record) if record else None,
        )

    def _request(self, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.control))
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ResponderError("the responder host closed the connection")
                data += chunk
        reply: dict[str, Any] = json.loads(data)
        if not reply.get("ok"):
            raise ResponderError(str(reply.get("error")))
        return reply

    def running(self) -> bool:
        """Whether the recorded process is alive."""
        return self.record is not None and process_alive(self.record)

    def _ensure_running(self) -> None:
        if self.running():
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.control.parent.mkdir(parents=True, exist_ok=True)
        self.control.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "cilia.runtime.responders", "--control", str(self.control)]
        self.record = start_process(f"/proc/{os.getpid()}/ns/net", argv, self.log_path)
        self._serving = set()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError):
                self._request({"op": "list"}, timeout=1.0)
                return
            if not self.running() or time.monotonic() >= deadline:
                self.shutdown()
                raise ResponderError(f"the responder host did not start (see {self.log_path})")
            time.sleep(0.01)

    def start(self, key: str, pod: str, netns: str, tcp: Sequence[int], udp: Sequence[int]) -> None:
        """Serve a container's ports inside `netns` (starts the process if needed)."""
        self._ensure_running()
        try:
            request = {"op": "start", "key": key, "pod": pod, "netns": netns}
            self._request({**request, "tcp": list(tcp), "udp": list(udp)})
        except OSError as exc:
            raise ResponderError(f"the responder host did not answer: {exc}") from exc
        self.serving().add(key)

    def stop(self, key: str) -> None:
        """Close a container's sockets (nothing to do when the process is gone)."""
        if self.running():
            with contextlib.suppress(OSError):
                self._request({"op": "stop", "key": key})
        self.serving().discard(key)

    def serving(self) -> set[str]:
        """Keys being served, as last refreshed."""
        if self._serving is None:
            self.refresh()
        assert self._serving is not None
        return self._serving

    def refresh(self) -> None:
        """Ask the process which keys it serves (none when it is gone)."""
        keys: list[str] = []
        if self.running():
            with contextlib.suppress(OSError, ResponderError):
                keys = self._request({"op": "list"}, timeout=5.0)["keys"]
        self._serving = set(keys)

    def shutdown(self) -> None:
        """Stop the process and every responder it serves."""
        if self.record is not None:
            stop_process(self.record)
        self.record, self._serving = None, set()
        self.control.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cilia.runtime.responders")
    parser.add_argument("--control", required=True, type=Path, help="unix socket to serve")
    asyncio.run(serve(parser.parse_args(argv).control))


if __name__ == "__main__":
    main()
