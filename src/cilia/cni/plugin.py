"""`cilia-cni`: the CNI plugin (spec 1.1.0; 1.0.0, 0.4.0 and 0.3.1 accepted).

A relay: it sends the command, the runtime's CNI_* variables and the network
configuration to the agent (`POST /v1/cni`, carried out by `cilia.cni.handler`) and
prints the answer. ADD therefore returns only once the agent enforces policy on the
container's endpoint. VERSION is answered here, and an agent that cannot be reached
is CNI error 11 (try again later).

It runs once per container, on the container's critical path, so it imports only
`os`, `sys` and the C modules under `socket` and `json`: the Python packages pull in
`enum`, `selectors` and `re`, about 20 ms of its start here, and `http.client` another
30 ms. Hence the one hand-written HTTP/1.1 exchange over the agent's unix socket, and
the configuration read with json's C scanner (the same parser `json.loads` uses).
"""

from __future__ import annotations

import _json
import _socket
import os
import sys

from cilia.cni.spec import (
    AGENT_FAILED,
    DECODE_FAILURE,
    DEFAULT_AGENT_SOCKET,
    ENVIRONMENT,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    IO_FAILURE,
    NOT_AVAILABLE,
    SPEC_VERSION,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
)

TIMEOUT = 120.0
"""ADD waits for identity and policy; a store outage can make that slow."""


class _Failure(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


class _ScanContext:
    """The settings json's C scanner reads (those of `json.loads` without hooks)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float
    memo: dict[str, str] = {}


def _document(text: str) -> tuple[bool, object]:
    """(whether `text` is one JSON document, its value)."""
    try:
        # typeshed types the context as a scanner; any object with these fields does
        value, end = _json.make_scanner(_ScanContext())(text, 0)  # type: ignore[arg-type]
    except Exception:  # StopIteration, RecursionError, or what json.decoder would describe
        return False, None
    return end == len(text), value


def _config(stdin: bytes) -> dict[str, object]:
    """The configuration object; the agent checks its fields."""
    whole, value = _document(stdin.decode("utf-8", "replace").strip())
    if not whole:
        raise _Failure(DECODE_FAILURE, "network configuration is not JSON")
    if not isinstance(value, dict):
        raise _Failure(INVALID_CONFIG, "network configuration must be a JSON object")
    return value


def _quoted(text: str) -> str:
    return str(_json.encode_basestring_ascii(text))


def _error(version: str, failure: _Failure) -> str:
    details = f', "details": {_quoted(failure.details)}' if failure.details else ""
    return (
        f'{{"cniVersion": {_quoted(version)}, "code": {failure.code}, '
        f'"msg": {_quoted(failure.msg)}{details}}}\n'
    )


def _request(command: str, stdin: bytes) -> bytes:
    head = [b"POST /v1/cni HTTP/1.1", b"Host: localhost", b"Connection: close"]
    head.append(b"Content-Type: application/json")
    head.append(b"Content-Length: %d" % len(stdin))
    for name in ("CNI_COMMAND", *ENVIRONMENT):
        value = (
            os.environb.get(name.encode(), b"") if name != "CNI_COMMAND" else os.fsencode(command)
        )
        if b"\r" in value or b"\n" in value:
            raise _Failure(INVALID_ENVIRONMENT, f"{name} holds a line break")
        head.append(name.replace("_", "-").encode() + b": " + value)
    return b"\r\n".join(head) + b"\r\n\r\n" + stdin


def _exchange(socket_path: str, request: bytes) -> bytes:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT)
        sock.connect(socket_path)
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise _Failure(
            TRY_AGAIN_LATER, "the cilia agent is not running", f"{socket_path}: {exc.strerror}"
        ) from None
    except OSError as exc:
        raise _Failure(IO_FAILURE, "talking to the cilia agent failed", str(exc)) from None
    except ValueError as exc:  # a path the file system cannot name (lone surrogates)
        raise _Failure(INVALID_CONFIG, "agent-socket is not a usable path", str(exc)) from None
    finally:
        sock.close()
    return b"".join(chunks)


def _answer(raw: bytes) -> tuple[int, bytes]:
    """(exit code, output) from the agent's response, read to its end."""
    header, _, body = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    exit_code = next(
        (v.strip() for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "cni-exit"),
        None,
    )
    text = body.decode(errors="replace").strip()
    whole, value = _document(text)
    # passed on only when whole: an object (error or result), or nothing on success
    printable = whole and isinstance(value, dict) if text else exit_code == "0"
    if exit_code not in ("0", "1") or not printable:
        raise _Failure(AGENT_FAILED, f"the cilia agent answered {lines[0]}", text[:500])
    return int(exit_code), body


def main() -> None:
    """Console script: the command in CNI_COMMAND, the configuration on stdin."""
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        versions = ", ".join(map(_quoted, SUPPORTED_VERSIONS))
        sys.stdout.write(f'{{"cniVersion": "{SPEC_VERSION}", "supportedVersions": [{versions}]}}\n')
        sys.exit(0)
    stdin = sys.stdin.buffer.read()
    version = SPEC_VERSION
    try:
        conf = _config(stdin)
        if conf.get("cniVersion") in SUPPORTED_VERSIONS:
            version = str(conf["cniVersion"])
        socket_path = conf.get("agent-socket", DEFAULT_AGENT_SOCKET)
        if not isinstance(socket_path, str) or not socket_path.startswith("/"):
            raise _Failure(INVALID_CONFIG, "network configuration: agent-socket must be a path")
        exit_code, out = _answer(_exchange(socket_path, _request(command, stdin)))
    except _Failure as failure:
        if command == "STATUS" and failure.code in (TRY_AGAIN_LATER, IO_FAILURE):
            failure = _Failure(NOT_AVAILABLE, "the cilia agent is not available", failure.details)
        sys.stdout.write(_error(version, failure))
        sys.exit(1)
    sys.stdout.buffer.write(out)
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
