"""HTTP client of the agent's unix-socket API (the CLI's only way to the agent).

Built on cilia.unix_http, not httpx: a command sends one or two requests, and
importing httpx would take longer than the command itself.
"""

from __future__ import annotations

import json as jsonlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlencode

from cilia.unix_http import Connection, Response

API_PREFIX = "/v1"


class ApiError(Exception):
    """The agent refused a request or could not be reached."""


def _text(value: Any) -> str:
    """A query value as the agent's API expects it (JSON-style booleans)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return "" if value is None else str(value)


def _target(path: str, params: Mapping[str, Any] | None) -> str:
    """/v1 path with its query string (list values repeat their key)."""
    target = API_PREFIX + quote(path, safe="/:@!$&'()*+,;=~%")
    pairs = [
        (key, _text(v))
        for key, value in (params or {}).items()
        for v in (value if isinstance(value, list | tuple) else [value])
    ]
    return f"{target}?{urlencode(pairs)}" if pairs else target


def _message(status: int, body: bytes) -> str:
    """The agent's error message out of an error response."""
    text = body.decode("utf-8", "replace")
    try:
        decoded = jsonlib.loads(body)
    except ValueError:
        return text or f"HTTP {status}"
    message = (decoded.get("error") or decoded.get("detail")) if isinstance(decoded, dict) else None
    if isinstance(message, list):  # FastAPI request-validation errors
        return "; ".join(
            f"{'.'.join(str(p) for p in m.get('loc', [])[1:])}: {m.get('msg')}" for m in message
        )
    return str(message or text)


class Client:
    """Requests to /v1 on the agent's socket, one connection each (safe across threads)."""

    def __init__(self, socket_path: str | os.PathLike[str], timeout: float = 120.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    @contextmanager
    def _exchange(
        self, method: str, path: str, json: Any, params: Mapping[str, Any] | None
    ) -> Iterator[tuple[Connection, Response]]:
        """Connect, send, and yield the answer's head; ApiError for an error status.
        TimeoutError and OSError (after connecting) are the caller's to handle."""
        try:
            conn = Connection(os.fspath(self.socket_path), self.timeout)
        except OSError as exc:
            raise ApiError(
                f"cannot reach the agent at {self.socket_path}: is it running? (start it "
                f"with 'cilia up') [{exc}]"
            ) from exc
        with conn:
            headers = {"Accept": "application/json"}
            body = None
            if json is not None:
                body = jsonlib.dumps(
                    json, ensure_ascii=False, separators=(",", ":"), allow_nan=False
                ).encode()
                headers["Content-Type"] = "application/json"
            resp = conn.request(method, _target(path, params), body, headers)
            if resp.status >= 400:
                raise ApiError(_message(resp.status, resp.read()))
            yield conn, resp

    def request(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        """Send a request; return the decoded JSON or raise ApiError with the agent's message."""
        try:
            with self._exchange(method, path, json, params) as (_, resp):
                data = resp.read()
        except TimeoutError as exc:
            raise ApiError(f"no answer from the agent within {self.timeout:g}s") from exc
        except OSError as exc:
            raise ApiError(f"request to the agent failed: {exc}") from exc
        return jsonlib.loads(data)

    @contextmanager
    def stream(
        self, path: str, params: Mapping[str, Any], read_timeout: float | None
    ) -> Iterator[Iterator[bytes]]:
        """GET a streamed answer: its non-empty lines as they come. After the answer's head,
        `read_timeout` (None: no limit) bounds each wait for data: TimeoutError."""
        with self._exchange("GET", path, None, params) as (conn, resp):
            conn.settimeout(read_timeout)
            yield _lines(resp.chunks())

    def get(self, path: str, **params: Any) -> Any:
        """GET path."""
        return self.request("GET", path, params=params or None)

    def healthy(self) -> bool:
        """Does the agent answer /healthz?"""
        try:
            return bool(self.get("/healthz").get("status") == "ok")
        except ApiError:
            return False


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Non-empty lines of a byte stream cut anywhere."""
    rest = b""
    for chunk in chunks:
        *lines, rest = (rest + chunk).split(b"\n")
        yield from (line for raw in lines if (line := raw.strip()))
    if rest.strip():
        yield rest.strip()
