"""HTTP/1.1 to etcd's JSON gateway: the session under etcd3gw and the watch stream.

Why not `requests` (etcd3gw's default) or `http.client`: CPU. Measured against etcd
3.4's gateway on this 2-core machine, one kept-alive POST /v3/kv/txn (JSON in and out
included) costs the caller about 830 µs of CPU through etcd3gw's `requests` session
(urllib3 pool, `trust_env` off; more with 8 threads), 200 µs with `http.client` (most
of it parsing the response headers through the `email` package), 220 µs with `h11`,
and 90 µs with the few lines below. An identity allocation is one transaction, so
with three agents and etcd sharing two cores that difference is most of the time.

What is implemented is the part of HTTP/1.1 etcd's gateway (Go's net/http) uses:
a POST with a `Content-Length` body, answers framed by `Content-Length` or chunked
(or ended by close), `Connection: close`, interim 1xx answers skipped. Connections
are kept alive in a pool; an idle one the server has closed is noticed before reuse,
and a request that finds a reused connection closed before any answer is sent once
more on a new one.

`GatewaySession` is the part of `requests.Session` etcd3gw calls (`post(url, json=,
timeout=)` returning `status_code`, `reason`, `text`, `json()`; `close()`), so etcd3gw
stays the client: its URLs and its mapping of statuses and failures (`requests`'
`Timeout` -> ConnectionTimeoutError, `ConnectionError` -> ConnectionFailedError).
"""

from __future__ import annotations

import contextlib
import json as jsonlib
import select
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

import requests

_RECV = 65536
_MAX_HEAD = 65536
_KEEPALIVE_OPTS = (
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
)


class HttpError(OSError):
    """The server broke the exchange: closed the connection early or sent no HTTP."""


class ClosedEarly(HttpError):
    """The connection ended before the first byte of an answer."""


class Connection:
    """One HTTP/1.1 connection; one exchange at a time."""

    def __init__(self, host: str, port: int, timeout: float | None) -> None:
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self._host = f"{host}:{port}".encode()
        self._buf = bytearray()

    def send(self, path: str, body: bytes) -> None:
        """POST `body` (JSON) to `path`, head and body in one write."""
        self.sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self._host, len(body), body)
        )

    def read_head(self) -> tuple[int, str, dict[bytes, bytes], bool]:
        """Status, reason, headers (names lower case) and whether the connection may be
        kept after this answer; interim (1xx) answers are skipped."""
        while True:
            end = self._buf.find(b"\r\n\r\n")
            while end < 0:
                if len(self._buf) > _MAX_HEAD:
                    raise HttpError("answer head too long")
                if not self._fill():
                    if self._buf:
                        raise HttpError("connection closed in the answer head")
                    raise ClosedEarly("connection closed before an answer")
                end = self._buf.find(b"\r\n\r\n")
            lines = bytes(self._buf[:end]).split(b"\r\n")
            del self._buf[: end + 4]
            version, _, rest = lines[0].partition(b" ")
            code, _, reason = rest.partition(b" ")
            if not version.startswith(b"HTTP/") or not code.isdigit():
                raise HttpError(f"not an HTTP answer: {lines[0][:80]!r}")
            status = int(code)
            if 100 <= status < 200:
                continue
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            keep = (
                version == b"HTTP/1.1" and b"close" not in headers.get(b"connection", b"").lower()
            )
            return status, reason.decode("latin-1"), headers, keep

    @property
    def pending(self) -> bytearray:
        """What has been received and not read yet."""
        return self._buf

    def _fill(self) -> bool:
        data = self.sock.recv(_RECV)
        self._buf += data
        return bool(data)

    def take(self, size: int) -> bytes:
        while len(self._buf) < size:
            if not self._fill():
                raise HttpError("connection closed in the answer body")
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def line(self) -> bytes:
        end = self._buf.find(b"\r\n")
        while end < 0:
            if len(self._buf) > _MAX_HEAD:
                raise HttpError("chunk header too long")
            if not self._fill():
                raise HttpError("connection closed in the answer body")
            end = self._buf.find(b"\r\n")
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def rest(self) -> bytes:
        """What is buffered or arrives next (b"" once the server closed)."""
        if not self._buf:
            self._fill()
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Body:
    """An answer's body, read in the pieces it arrives in."""

    def __init__(self, conn: Connection, status: int, headers: dict[bytes, bytes]) -> None:
        self._conn = conn
        self._chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        length = headers.get(b"content-length")
        if status in (204, 304):
            length = b"0"
        self._left = int(length) if length is not None and not self._chunked else -1
        self.framed = self._chunked or self._left >= 0
        self.done = self._left == 0

    def part(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        conn = self._conn
        if self.done:
            return b""
        if self._chunked:
            size = int(conn.line().split(b";", 1)[0], 16)
            if size == 0:
                while conn.line():  # trailers, up to the empty line
                    pass
                self.done = True
                return b""
            data = conn.take(size + 2)
            if data[-2:] != b"\r\n":
                raise HttpError("malformed chunk")
            return data[:-2]
        if self._left >= 0:
            data = conn.take(self._left)
            self._left = 0
            self.done = True
            return data
        data = conn.rest()
        self.done = not data
        return data

    def buffered(self) -> bool:
        """True if `part()` would not wait for the server."""
        buf = self._conn.pending
        if self.done:
            return True
        if self._chunked:
            end = buf.find(b"\r\n")
            if end < 0:
                return False
            try:
                size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
            except ValueError:
                return True  # part() raises at once
            return len(buf) >= end + 2 + size + 2
        return len(buf) >= self._left if self._left >= 0 else bool(buf)

    def read(self) -> bytes:
        """The whole (rest of the) body."""
        parts = []
        while part := self.part():
            parts.append(part)
        return b"".join(parts)


class GatewayResponse:
    """What etcd3gw reads of an answer."""

    __slots__ = ("content", "reason", "status_code")

    def __init__(self, status_code: int, reason: str, content: bytes) -> None:
        self.status_code = status_code
        self.reason = reason
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class GatewaySession:
    """POSTs to one etcd endpoint over kept-alive connections (LIFO, up to `pool_size`
    idle ones kept); safe to share between threads."""

    def __init__(self, base_url: str, pool_size: int = 32) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"unsupported etcd endpoint {base_url!r} (http://HOST:PORT)")
        self.host = parts.hostname
        self.port = parts.port or 2379
        self.pool_size = pool_size
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def post(self, url: str, json: Any = None, timeout: float | None = None) -> GatewayResponse:
        """POST `json` to `url`; failures raised as etcd3gw expects them of `requests`."""
        path = urlsplit(url).path
        body = jsonlib.dumps(json, separators=(",", ":")).encode()
        while True:
            conn, reused = self._connection(timeout)
            try:
                conn.send(path, body)
                status, reason, headers, keep = conn.read_head()
                answer = Body(conn, status, headers)
                content = answer.read()
            except (ClosedEarly, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused:
                    continue
                raise self._failed(exc) from exc
            except TimeoutError as exc:
                conn.close()
                raise requests.exceptions.ReadTimeout(
                    f"{self.host}:{self.port}: no answer within {timeout}s"
                ) from exc
            except (OSError, ValueError) as exc:
                conn.close()
                raise self._failed(exc) from exc
            if keep and answer.framed:
                self._release(conn)
            else:
                conn.close()
            return GatewayResponse(status, reason, content)

    def _failed(self, exc: BaseException) -> requests.exceptions.ConnectionError:
        return requests.exceptions.ConnectionError(f"{self.host}:{self.port}: {exc}")

    def _connection(self, timeout: float | None) -> tuple[Connection, bool]:
        """An idle connection still open (True), or a new one (False)."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            if _still_open(conn.sock):
                if conn.timeout != timeout:
                    conn.timeout = timeout
                    conn.sock.settimeout(timeout)
                return conn, True
            conn.close()
        try:
            return Connection(self.host, self.port, timeout), False
        except TimeoutError as exc:
            raise requests.exceptions.ConnectTimeout(
                f"{self.host}:{self.port}: no connection within {timeout}s"
            ) from exc
        except OSError as exc:
            raise self._failed(exc) from exc

    def _release(self, conn: Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.pool_size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _still_open(sock: socket.socket) -> bool:
    """True if an idle connection has nothing to read (EOF or stray bytes mean the
    server closed it or the exchange is out of step)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


class Stream:
    """One POST whose answer is read line by line as it arrives (etcd's watch: one
    JSON object per line), until the server ends it or `shutdown()`."""

    def __init__(self, conn: Connection, body: Body) -> None:
        self._conn = conn
        self._body = body
        self._pending = bytearray()

    @classmethod
    def open(cls, url: str, path: str, request: Any, timeout: float) -> Stream:
        """Connect and send; raises OSError (HttpError for an answer other than 200)."""
        parts = urlsplit(url)
        conn = Connection(parts.hostname or "", parts.port or 2379, timeout)
        try:
            conn.send(path, jsonlib.dumps(request).encode())
            status, _, headers, _ = conn.read_head()
            body = Body(conn, status, headers)
            if status != 200:
                raise HttpError(f"{path} refused: HTTP {status} {body.part()[:300]!r}")
            conn.sock.settimeout(None)  # a quiet stream is fine; keepalive finds dead peers
            for level, opt, value in _KEEPALIVE_OPTS:
                conn.sock.setsockopt(level, opt, value)
        except BaseException:
            conn.close()
            raise
        return cls(conn, body)

    def readline(self) -> bytes:
        """The next line with its b"\\n" (the last one may lack it); b"" at the end."""
        pending = self._pending
        end = pending.find(b"\n")
        while end < 0:
            part = self._body.part()
            if not part:
                line = bytes(pending)
                pending.clear()
                return line
            pending += part
            end = pending.find(b"\n")
        line = bytes(pending[: end + 1])
        del pending[: end + 1]
        return line

    def line_ready(self) -> bool:
        """True if the next line (or chunk of the answer) is here already. The gateway
        writes each watch response with its newline as one chunk."""
        return b"\n" in self._pending or self._body.buffered()

    def shutdown(self) -> None:
        """Wake a blocked reader (close() alone would not)."""
        with contextlib.suppress(OSError):
            self._conn.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._conn.close()
