"""The asyncio Kafka proxy: one listener per redirect, requests checked one by one.

Allowed requests are forwarded unchanged; a denied one is answered by the proxy
(error 29 for its topics, the request's correlation id) in the order the client
expects, and the connection stays open. A malformed frame closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from cilia.policy.desired import Direction
from cilia.proxy.kafka import schemas as k
from cilia.proxy.kafka.codec import DecodeError
from cilia.proxy.kafka.messages import (
    MAX_FRAME,
    KafkaRequest,
    cap_api_versions,
    deny_response,
    frame,
    parse_request,
)
from cilia.proxy.kafka.policy import KafkaPolicy
from cilia.proxy.records import Counters, CountsHook, L7Record, Verdict
from cilia.proxy.sockets import ANY, KeepAlive, family_of, listen_hosts, listener, set_keepalive

log = logging.getLogger(__name__)

IdentityOf = Callable[[str], int]
RecordHook = Callable[[L7Record], None]
_MIN_REQUEST = 10  # api key, version, correlation id, client id length


@dataclass
class _Pending:
    """A response the client waits for: from upstream (local is None) or written by the proxy."""

    correlation_id: int
    api_key: int
    api_version: int
    local: bytes | None = None


class KafkaProxy:
    """Listens on (host, port) and relays Kafka requests allowed by `policy`.

    `ANY` listens on both families' wildcards (one socket each, one port).
    With `upstream` None the listeners are transparent (IP_TRANSPARENT) and each
    connection goes to its original destination, the accepted socket's local
    address; otherwise every connection goes to `upstream` (tests, plain mode).
    `identity_of(ip)` gives the peer's security identity: the client's on
    ingress, the original destination's on egress. `upstream_mark(identity)`,
    when given, sets SO_MARK on upstream sockets so the datapath can tell proxy
    traffic (and its source identity) apart. Each request is counted to
    `on_counts` and handed to `on_request` as a record while `wants_records()`.
    """

    def __init__(
        self,
        policy: KafkaPolicy,
        identity_of: IdentityOf,
        *,
        host: str = ANY,
        port: int = 0,
        direction: Direction = Direction.INGRESS,
        upstream: tuple[str, int] | None = None,
        on_request: RecordHook | None = None,
        on_counts: CountsHook | None = None,
        wants_records: Callable[[], bool] = lambda: True,
        upstream_mark: Callable[[int], int] | None = None,
        keepalive: KeepAlive | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.policy = policy
        self.identity_of = identity_of
        self.host = host
        self.direction = direction
        self.upstream = upstream
        self.on_request = on_request
        self.on_counts = on_counts
        self.wants_records = wants_records
        self.upstream_mark = upstream_mark
        self.keepalive = keepalive or KeepAlive()
        self.connect_timeout = connect_timeout
        self.counters = Counters()
        self._requested_port = port
        self._servers: list[asyncio.Server] = []
        self._conns: set[asyncio.Task[None]] = set()
        self.port = port

    async def start(self) -> None:
        """Bind and start accepting; `port` holds the bound port afterwards."""
        port = self._requested_port
        try:
            for host in listen_hosts(self.host):
                sock = listener(host, port, transparent=self.upstream is None)
                port = sock.getsockname()[1]
                self._servers.append(await asyncio.start_server(self._accept, sock=sock))
        except BaseException:
            await self.stop()
            raise
        self.port = port

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        while self._servers:
            server = self._servers.pop()
            server.close()
            await server.wait_closed()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)

    def set_policy(self, policy: KafkaPolicy) -> None:
        """Replace the allow-list; open connections use it from their next request."""
        self.policy = policy

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await _Connection(self, reader, writer).run()
        except asyncio.CancelledError:
            pass
        except Exception:  # one connection must never take the proxy down
            log.exception("kafka proxy connection failed")
        finally:
            self._conns.discard(task)
            writer.close()

    def _report(self, record: L7Record) -> None:
        self.counters.count(record)
        try:
            if self.on_counts is not None:
                self.on_counts({record.verdict: 1})
            if self.on_request is not None and self.wants_records():
                self.on_request(record)
        except Exception:
            log.exception("kafka proxy request hook failed")


class _Connection:
    """One client connection and its upstream connection."""

    def __init__(
        self, proxy: KafkaProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.creader = reader
        self.cwriter = writer
        sock: socket.socket = writer.get_extra_info("socket")
        set_keepalive(sock, proxy.keepalive)
        self.source: tuple[str, int] = writer.get_extra_info("peername")[:2]
        self.destination: tuple[str, int] = proxy.upstream or sock.getsockname()[:2]
        self.pending: deque[_Pending] = deque()
        self.uwriter: asyncio.StreamWriter | None = None

    def _peer_identity(self) -> int:
        ip = self.source[0] if self.proxy.direction is Direction.INGRESS else self.destination[0]
        return self.proxy.identity_of(ip)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket(family_of(self.destination[0]), socket.SOCK_STREAM)
        try:
            set_keepalive(sock, self.proxy.keepalive)
            if self.proxy.upstream_mark is not None:
                mark = self.proxy.upstream_mark(self._peer_identity())
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(
                loop.sock_connect(sock, self.destination), self.proxy.connect_timeout
            )
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def run(self) -> None:
        try:
            ureader, self.uwriter = await self._connect()
        except (OSError, TimeoutError) as err:
            log.warning("kafka proxy: cannot reach %s:%d: %s", *self.destination, err)
            return
        requests = asyncio.create_task(self._requests())
        responses = asyncio.create_task(self._responses(ureader))
        try:
            await asyncio.wait({requests, responses}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (requests, responses):
                task.cancel()
            await asyncio.gather(requests, responses, return_exceptions=True)
            self.uwriter.close()

    def _record(
        self, verdict: Verdict, req: KafkaRequest | None, error: str | None = None
    ) -> L7Record:
        base = L7Record(
            "kafka",
            "forwarded"
            if verdict == "forwarded"
            else "denied"
            if verdict == "denied"
            else "parse-error",
            self.proxy.direction,
            self._peer_identity(),
            self.source,
            self.destination,
            self.proxy.port,
            error=error,
        )
        if req is None:
            return base
        return replace(
            base,
            kafka_api_key=req.api_key,
            kafka_api_version=req.api_version,
            kafka_correlation_id=req.correlation_id,
            kafka_client_id=req.client_id,
            kafka_topics=req.topics,
        )

    async def _read_frame(self, reader: asyncio.StreamReader, minimum: int) -> bytes | None:
        """One size-prefixed frame; None on a clean end of stream between frames."""
        try:
            head = await reader.readexactly(4)
        except asyncio.IncompleteReadError as err:
            if not err.partial:
                return None
            raise DecodeError("truncated frame size") from err
        (size,) = struct.unpack(">i", head)
        if size < minimum or size > MAX_FRAME:
            raise DecodeError(f"invalid frame size {size}")
        try:
            return await reader.readexactly(size)
        except asyncio.IncompleteReadError as err:
            raise DecodeError(f"truncated frame: {len(err.partial)} of {size} bytes") from err

    async def _requests(self) -> None:
        assert self.uwriter is not None
        while True:
            try:
                data = await self._read_frame(self.creader, _MIN_REQUEST)
                if data is None:
                    return
                req = parse_request(data)
            except DecodeError as err:
                log.warning(
                    "kafka proxy: malformed request from %s:%d: %s; closing", *self.source, err
                )
                self.proxy._report(self._record("parse-error", None, str(err)))
                return
            if self.proxy.policy.allows(self._peer_identity(), req):
                self.proxy._report(self._record("forwarded", req))
                if req.expects_response:
                    self.pending.append(_Pending(req.correlation_id, req.api_key, req.api_version))
                self.uwriter.write(frame(req.frame))
                await self.uwriter.drain()
                continue
            self.proxy._report(self._record("denied", req))
            if not req.expects_response:
                continue
            response = deny_response(req)
            if response is None:
                log.warning(
                    "kafka proxy: denied api key %d v%d has no error response; closing",
                    req.api_key,
                    req.api_version,
                )
                return
            if self.pending:
                self.pending.append(
                    _Pending(req.correlation_id, req.api_key, req.api_version, response)
                )
            else:
                self.cwriter.write(response)
                await self.cwriter.drain()

    async def _responses(self, ureader: asyncio.StreamReader) -> None:
        while True:
            try:
                data = await self._read_frame(ureader, 4)
            except DecodeError as err:
                log.warning(
                    "kafka proxy: bad response from %s:%d: %s; closing", *self.destination, err
                )
                return
            if data is None:
                return
            if not self.pending or self.pending[0].local is not None:
                log.warning(
                    "kafka proxy: unexpected response from %s:%d; closing", *self.destination
                )
                return
            head = self.pending.popleft()
            if head.api_key == k.API_VERSIONS:
                data = data[:4] + cap_api_versions(data[4:], head.api_version, k.MAX_VERSION)
            self.cwriter.write(frame(data))
            while self.pending and self.pending[0].local is not None:
                self.cwriter.write(self.pending.popleft().local or b"")
            await self.cwriter.drain()
