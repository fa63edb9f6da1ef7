"""HTTP/1.1 requests to a server on a unix socket, for short-lived clients of the agent.

Hand-written on purpose: the `cilia` command sends one or two small requests and
exits, and the libraries cost more to import than the whole exchange (measured on a
2-core machine: httpx 150-250 ms, the standard library's http.client about 40 ms,
mostly email.parser and ssl). Only the C module `_socket` is imported (the `socket`
package builds its enums at import). It speaks just what those clients need: one
request per connection (`Connection: close`), a body of known length, and answers
with Content-Length, chunked transfer coding or a body that ends with the connection.
"""

from __future__ import annotations

import _socket
from collections.abc import Iterator

MAX_HEAD_LINE = 65536
RECV_SIZE = 65536


class HTTPError(OSError):
    """The server's answer is not HTTP/1.x as expected."""


class Response:
    """Status and headers of an answer; its body read with `read()` or `chunks()`."""

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()
        version, _, rest = self._line().partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise HTTPError(f"not an HTTP/1.x status line: {version + b' ' + rest!r}")
        self.status = int(code)
        self.headers: dict[str, str] = {}
        while line := self._line().rstrip(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def _fill(self) -> bool:
        data = self._sock.recv(RECV_SIZE)
        self._buf += data
        return bool(data)

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\n")) < 0:
            if len(self._buf) > MAX_HEAD_LINE or not self._fill():
                raise HTTPError("connection closed or line too long in the answer")
        line = bytes(self._buf[: end + 1])
        del self._buf[: end + 1]
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self._buf) < size:
            if not self._fill():
                raise HTTPError(f"connection closed {size - len(self._buf)} bytes early")
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    @staticmethod
    def _size(text: bytes | str, base: int) -> int:
        try:
            return int(text, base)
        except ValueError:
            raise HTTPError(f"bad length in the answer: {text!r}") from None

    def chunks(self) -> Iterator[bytes]:
        """The body, piece by piece as it arrives (transfer coding removed)."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while size := self._size(self._line().split(b";", 1)[0].strip(), 16):
                yield self._exactly(size)
                self._line()  # the CRLF after each chunk
            while self._line().strip():  # trailer fields, ignored
                pass
        elif "content-length" in self.headers:
            yield self._exactly(self._size(self.headers["content-length"], 10))
        else:
            if self._buf:
                yield bytes(self._buf)
                self._buf.clear()
            while data := self._sock.recv(RECV_SIZE):
                yield data

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(self.chunks())


class Connection:
    """One request and its answer over a fresh connection to the socket at `path`.

    Connecting raises OSError (FileNotFoundError, ConnectionRefusedError, ...) when
    nobody listens; any read or write may raise TimeoutError after `timeout` seconds
    without progress (None: wait for ever), and HTTPError on a malformed answer.
    """

    def __init__(self, path: str, timeout: float | None) -> None:
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
        except BaseException:
            self._sock.close()
            raise

    def settimeout(self, timeout: float | None) -> None:
        """Change the time limit of every later read and write."""
        self._sock.settimeout(timeout)

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send the request; return the answer once its head has arrived."""
        fields = {"Host": "localhost", "Connection": "close", **(headers or {})}
        if body is not None:
            fields["Content-Length"] = str(len(body))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in fields.items()
        )
        try:
            self._sock.sendall(head.encode("latin-1") + b"\r\n" + (body or b""))
        except (BrokenPipeError, ConnectionResetError):
            # A server may answer and close before it reads a body it refuses (one over
            # its size limit); that answer is still there to be read.
            try:
                return Response(self._sock)
            except OSError:
                pass
            raise
        return Response(self._sock)

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
