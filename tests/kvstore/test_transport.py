"""The gateway transport against a local HTTP/1.1 server: framing, keep-alive, a
connection the server dropped, and failures raised as etcd3gw expects them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from cilia.kvstore.transport import GatewaySession
from cilia.proxy.sockets import free_port


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: set[tuple[str, int]] = set()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.connections.add(self.client_address)
        body = json.dumps({"echo": request, "path": self.path}).encode()
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("Content-Type", "application/json")
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 7):
                part = body[i : i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/close":
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        if self.path == "/drop":  # keep-alive announced, then closed anyway
            self.close_connection = True


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_framings_and_keep_alive(server: str) -> None:
    session = GatewaySession(server)
    _Handler.connections.clear()
    try:
        for path in ("/v3/kv/txn", "/chunked", "/v3/kv/txn"):
            answer = session.post(server + path, json={"n": path}, timeout=2.0)
            assert answer.status_code == 200
            assert answer.json() == {"echo": {"n": path}, "path": path}
        assert len(_Handler.connections) == 1  # one kept-alive connection for all three
        missing = session.post(server + "/missing", json={}, timeout=2.0)
        assert missing.status_code == 404 and "missing" in missing.text
        assert session.post(server + "/close", json={}, timeout=2.0).status_code == 200
        assert session.post(server + "/v3/kv/txn", json={}, timeout=2.0).status_code == 200
        assert len(_Handler.connections) == 2  # "Connection: close" was honoured
    finally:
        session.close()


def test_connection_dropped_by_the_server_is_replaced(server: str) -> None:
    session = GatewaySession(server)
    try:
        for _ in range(3):
            answer = session.post(server + "/drop", json={"x": 1}, timeout=2.0)
            assert answer.json()["echo"] == {"x": 1}
    finally:
        session.close()


def test_unreachable_raises_what_etcd3gw_maps() -> None:
    session = GatewaySession(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(requests.exceptions.ConnectionError):
        session.post(f"http://127.0.0.1:{session.port}/v3/kv/range", json={}, timeout=1.0)
