"""Kubernetes pod semantics on a real agent: containerPort is informational, readiness
follows readinessProbe (tcpSocket, httpGet, exec), exited containers restart per
restartPolicy with backoff, counted."""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Cilia, eventually, running_agent

pytestmark = pytest.mark.integration

LISTEN_LATE = (
    "import socket, time; time.sleep({delay}); s = socket.socket();"
    " s.bind(('0.0.0.0', {port})); s.listen(); time.sleep(600)"
)


@pytest.fixture(scope="module")
def cilia(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cilia]:
    with running_agent(tmp_path_factory.mktemp("pods")) as agent:
        yield agent


def _row(cilia: Cilia, name: str) -> dict[str, Any]:
    rows = cilia.client.request("GET", "/objects/pods")
    return next(r for r in rows if r["name"] == name)


def _pod(name: str, container: str, spec: str = "") -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  {spec}
  containers:
  - {container}
"""


def _argv(*argv: str) -> str:
    return json.dumps(argv)  # JSON is YAML


def test_a_command_that_never_listens_is_ready_once_it_runs(cilia: Cilia) -> None:
    text = _pod("quiet", "{name: c, command: [sleep, '600'], ports: [{containerPort: 80}]}")
    cilia.apply(text)
    try:
        row = _row(cilia, "quiet")
        assert (row["ready"], row["phase"], row["restarts"]) == ("1/1", "Running", 0)
        out = cilia.run("get", "pods").stdout
        assert "quiet" in out
    finally:
        cilia.delete(text)


def test_tcp_probe_waits_for_the_port(cilia: Cilia) -> None:
    code = LISTEN_LATE.format(delay=2, port=8080)
    probe = "readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}"
    text = _pod("late", f"{{name: c, command: {_argv(sys.executable, '-c', code)}, {probe}}}")
    cilia.apply(text)
    try:
        assert _row(cilia, "late")["ready"] == "0/1"
        assert eventually(lambda: _row(cilia, "late")["ready"] == "1/1")
    finally:
        cilia.delete(text)


def test_http_probe_follows_the_status_code(cilia: Cilia, tmp_path: Path) -> None:
    (tmp_path / "ok").write_text("ok")
    server = _argv(sys.executable, "-m", "http.server", "8081", "-d", str(tmp_path))
    texts = [
        _pod(
            name,
            f"{{name: c, command: {server}, ports: [{{name: http, containerPort: 8081}}],"
            f" readinessProbe: {{httpGet: {{port: http, path: {path}}}, periodSeconds: 1,"
            " failureThreshold: 1}}",
        )
        for name, path in (("web-ok", "/ok"), ("web-404", "/missing"))
    ]
    for text in texts:
        cilia.apply(text)
    try:
        assert eventually(lambda: _row(cilia, "web-ok")["ready"] == "1/1")
        time.sleep(2.5)  # several probes answered 404
        assert _row(cilia, "web-404")["ready"] == "0/1"
    finally:
        for text in texts:
            cilia.delete(text)


def test_exec_probe_and_readiness_lost(cilia: Cilia, tmp_path: Path) -> None:
    flag = tmp_path / f"ready-{secrets.token_hex(3)}"
    probe = (
        f"readinessProbe: {{exec: {{command: [test, -f, '{flag}']}}, periodSeconds: 1,"
        " failureThreshold: 2}"
    )
    text = _pod("flagged", f"{{name: c, command: [sleep, '600'], {probe}}}")
    cilia.apply(text)
    try:
        time.sleep(1.5)
        assert _row(cilia, "flagged")["ready"] == "0/1"
        flag.touch()
        assert eventually(lambda: _row(cilia, "flagged")["ready"] == "1/1")
        flag.unlink()
        assert eventually(lambda: _row(cilia, "flagged")["ready"] == "0/1")
    finally:
        cilia.delete(text)


@pytest.mark.parametrize(
    ("policy", "command", "phase", "restarted"),
    [
        ("OnFailure", "exit 3", "Running", True),
        ("Always", "exit 0", "Running", True),
        ("OnFailure", "exit 0", "Succeeded", False),
        ("Never", "exit 3", "Failed", False),
    ],
)
def test_restart_policy(
    cilia: Cilia, policy: str, command: str, phase: str, restarted: bool
) -> None:
    name = f"exits-{policy.lower()}-{command[-1]}"
    text = _pod(name, f"{{name: c, command: [sh, -c, '{command}']}}", f"restartPolicy: {policy}")
    cilia.apply(text)
    try:
        if restarted:  # backoff 0 s, 1 s, 2 s: the third restart within about 4 s
            assert eventually(lambda: _row(cilia, name)["restarts"] >= 3, timeout=12)
            log = cilia.client.request("GET", f"/endpoint/default/{name}/log")
            assert any("exited (exit code" in e["message"] for e in log), log
            pod = cilia.run("get", "pod", name, "-o", "json").json()
            assert pod["status"]["containerStatuses"][0]["restartCount"] >= 3
        else:
            assert eventually(lambda: _row(cilia, name)["phase"] == phase)
            time.sleep(1.5)
            row = _row(cilia, name)
            assert row["restarts"] == 0 and row["phase"] == phase, row
            assert row["containers"][0]["exit_code"] == int(command[-1])
    finally:
        cilia.delete(text)
