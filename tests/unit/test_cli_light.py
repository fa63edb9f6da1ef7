"""The light CLI: its HTTP client over a unix socket, lazy commands, completion."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from cilia.cli.client import ApiError, Client
from cilia.cli.main import COMMANDS, main
from cilia.unix_http import Connection, HTTPError

HEAVY = ("pydantic", "httpx", "yaml", "cilia.agent", "fastapi")
"""Modules a command that sends one request must not import."""


@contextmanager
def _serve(path: Path, answer: bytes) -> Iterator[list[bytes]]:
    """A one-shot server on `path` that records the request and sends `answer`."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    seen: list[bytes] = []

    def once() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length:
                body += conn.recv(4096)
            seen.append(head + b"\r\n\r\n" + body)
            conn.sendall(answer)

    thread = threading.Thread(target=once, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        thread.join(5)
        server.close()


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "api.sock"


@pytest.mark.parametrize(
    "answer",
    [
        b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"a": [1]}\n',
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n'
        b"7;x=y\r\n: [1]}\n\r\n0\r\nTrailer: t\r\n\r\n",
        b'HTTP/1.1 200 OK\r\n\r\n{"a": [1]}\n',  # the body ends with the connection
    ],
    ids=["content-length", "chunked", "close-delimited"],
)
def test_bodies_in_every_framing(sock: Path, answer: bytes) -> None:
    with _serve(sock, answer), Connection(str(sock), 5) as conn:
        resp = conn.request("GET", "/v1/x")
        assert resp.status == 200
        assert json.loads(resp.read()) == {"a": [1]}


def test_client_sends_json_and_query(sock: Path) -> None:
    with _serve(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}") as seen:
        assert Client(sock, 5).request("PUT", "/pods/a b", {"k": "é"}, {"all": True}) == {}
        head, _, body = seen[0].partition(b"\r\n\r\n")
        assert head.startswith(b"PUT /v1/pods/a%20b?all=true HTTP/1.1\r\n")
        assert b"Content-Type: application/json" in head
        assert json.loads(body) == {"k": "é"}


def test_client_error_carries_the_agents_message(sock: Path) -> None:
    body = json.dumps({"detail": [{"loc": ["body", "port"], "msg": "too big"}]}).encode()
    answer = b"HTTP/1.1 422 X\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with _serve(sock, answer), pytest.raises(ApiError, match=r"^port: too big$"):
        Client(sock, 5).get("/x")


def test_malformed_answers_are_errors_not_crashes(sock: Path) -> None:
    bad_status = pytest.raises(ApiError, match=r"not an HTTP/1\.x status line")
    with _serve(sock, b"SSH-2.0-nope\r\n\r\n"), bad_status:
        Client(sock, 5).get("/x")
    sock.unlink()
    short = pytest.raises(ApiError, match="48 bytes early")
    with _serve(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}"), short:
        Client(sock, 5).get("/x")
    other = sock.with_name("b.sock")
    with (
        _serve(other, b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
        Connection(str(other), 5) as conn,
        pytest.raises(HTTPError, match="bad length"),
    ):
        conn.request("GET", "/").read()


def test_no_agent_is_a_clear_error(sock: Path) -> None:
    with pytest.raises(ApiError, match=r"cannot reach the agent at .*cilia up"):
        Client(sock, 1).get("/healthz")
    assert Client(sock, 1).healthy() is False


def test_every_lazy_command_loads_and_has_help() -> None:
    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts(shell: str) -> None:
    result = CliRunner().invoke(main, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert "_CILIA_COMPLETE" in result.output
    assert (shell == "zsh") == ("compdef" in result.output)


def test_completion_completes_commands() -> None:
    env = {**os.environ, "_CILIA_COMPLETE": "bash_complete", "COMP_WORDS": "cilia end"}
    env["COMP_CWORD"] = "1"
    cilia = Path(sys.executable).with_name("cilia")  # the console script the shell runs
    out = subprocess.run([cilia], env=env, capture_output=True, text=True, timeout=60)
    assert "plain,endpoint" in out.stdout.split(), out


def test_a_request_command_imports_nothing_heavy(tmp_path: Path) -> None:
    """`cilia status` against no agent: it fails cleanly, and never loaded the agent's
    stack (pydantic, httpx, PyYAML) to get there."""
    code = (
        "import sys\n"
        "from cilia.cli.main import main\n"
        "try:\n    main(['status'])\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        f"heavy = sorted(m for m in sys.modules if m.startswith({HEAVY!r}))\n"
        "print(code, heavy)\n"
    )
    env = {**os.environ, "CILIA_RUN_DIR": str(tmp_path), "CILIA_CLUSTER_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "1 []", (out.stdout, out.stderr)
    assert "cannot reach the agent" in out.stderr
