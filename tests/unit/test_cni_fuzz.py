"""Property-based tests of what the CNI plugin and the agent's CNI handler accept.

Whatever the command, the CNI_* variables and the configuration on stdin (random bytes,
random JSON, fields of the wrong type, huge or deeply nested documents), and whatever
the endpoint owner answers:

- `handler.run` returns an exit code and output: an empty one or a result on 0, CNI
  error JSON (code, msg, cniVersion) on 1; it never raises, so `POST /v1/cni` never
  answers 500;
- the plugin (`plugin.main`, run in this process against a tiny fake agent on a unix
  socket made by the test, or none) exits 0 or 1 with the agent's answer or CNI error
  JSON, without a traceback.

Bounded by the hypothesis profile (tests/conftest.py); `HYPOTHESIS_PROFILE=long` for
a long run.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socketserver
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cilia.cni import handler, plugin
from cilia.cni.spec import COMMANDS, ENVIRONMENT, SUPPORTED_VERSIONS
from cilia.runtime.owner import EndpointError, EndpointRequest
from tests.runtimes.fake_owner import FakeOwner


def scaled(share: float, **kwargs: Any) -> settings:
    """A share of the profile's examples, for tests that cost more per example."""
    return settings(max_examples=max(10, int(settings.default.max_examples * share)), **kwargs)


# --- inputs -----------------------------------------------------------------------------


def _loose(data: bytes) -> str:
    """Bytes as the agent reads a header: UTF-8, undecodable bytes as surrogates."""
    return data.decode("utf-8", "surrogateescape")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
ODD = st.one_of(
    JSON,
    st.integers(1, 300_000).map(lambda n: "x" * n),  # huge strings
    st.sampled_from(["", "1.1.0", "0.2.0", "eth0", "/proc/self/ns/net", "\x00", "\udcff"]),
)
COMMAND = st.one_of(
    st.sampled_from([*COMMANDS, "VERSION", "", "add", "ADD ", "FROB"]),
    st.binary(max_size=12).map(_loose),
)
ENV_VALUE = st.one_of(
    st.sampled_from(
        [
            "",
            "c-1",
            "/proc/self/ns/net",
            "eth0",
            "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p",
            "IgnoreUnknown=1;=x",
            "K8S_POD_NAME",
            ";;",
            "/opt/cni/bin",
        ]
    ),
    st.binary(max_size=40).map(_loose),
    st.integers(1, 100_000).map(lambda n: "a" * n),
)
ENV = st.fixed_dictionaries({}, optional=dict.fromkeys(ENVIRONMENT, ENV_VALUE))

FIELDS = (
    "cniVersion",
    "name",
    "type",
    "plugins",
    "prevResult",
    "runtimeConfig",
    "args",
    "dns",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
    "capabilities",
)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid configuration with some fields replaced by odd values, or added."""
    conf: dict[str, Any] = {
        "cniVersion": draw(st.sampled_from(SUPPORTED_VERSIONS)),
        "name": "fuzz",
        "type": "cilia-cni",
    }
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        conf[key] = draw(ODD)
    if draw(st.booleans()):
        conf["prevResult"] = {"ips": draw(st.lists(JSON, max_size=3))}
    if draw(st.booleans()):
        items = st.fixed_dictionaries(
            {}, optional={"containerID": ODD | st.just("c-1"), "ifname": ODD | st.just("eth0")}
        )
        conf["cni.dev/valid-attachments"] = draw(st.lists(items | JSON, max_size=3))
    return conf


def _nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


STDIN = st.one_of(
    configs().map(json.dumps),
    JSON.map(json.dumps),
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace")),
    st.tuples(st.integers(1, 200_000), st.sampled_from(["list", "dict"])).map(
        lambda t: _nested(*t)
    ),
    st.sampled_from(
        [
            '{"cniVersion": "1.1.0", "name": "n", "type": "t", "dns": {"x": NaN}}',
            '{"cniVersion": "1.1.0", "name": "n", "type": "t", "args": Infinity}',
            '{"cniVersion": "1.1.0", "name": "n", "type": "t", "x": 1' + "0" * 5000 + "}",
            '{"cniVersion": "1.1.0", "name": "n", "type": "t"} trailing',
            "",
        ]
    ),
)

# --- the owner --------------------------------------------------------------------------


class Owner(FakeOwner):
    """A FakeOwner that creates endpoints and checks them; `fail` makes every call
    raise (an EndpointError of that status, or a bare exception for 0)."""

    def __init__(self, fail: int | None = None) -> None:
        super().__init__()
        self.fail = fail

    def _maybe_fail(self) -> None:
        if self.fail == 0:
            raise RuntimeError("owner broke")
        if self.fail is not None:
            raise EndpointError("owner refuses", self.fail)

    def endpoint_put(self, req: EndpointRequest) -> dict[str, Any]:
        self._maybe_fail()
        view = {
            "container-id": req.container_id,
            "runtime": req.runtime,
            "pod-interface": req.interface_name,
            "ipv4": "10.200.0.7",
            "interface": "lxc0123",
            "addressing": {
                "ipv4": "10.200.0.7",
                "gateway": "10.200.0.1",
                "mac": "02:00:00:00:00:07",
                "host-mac": "02:00:00:00:00:01",
                "mtu": 1500,
                "routes": [
                    {"dst": "10.200.0.1/32", "mtu": 1450},
                    {"dst": "0.0.0.0/0", "gw": "10.200.0.1", "mtu": 1450},
                ],
            },
        }
        with self.lock:
            self.views[req.container_id] = view
        return view

    def endpoint_remove(self, key: str) -> bool:
        self._maybe_fail()
        return super().endpoint_remove(key)

    def endpoint_check(self, key: str) -> list[str]:
        self._maybe_fail()
        return []


def _owner(fail: int | None, views: list[str]) -> Owner:
    owner = Owner(fail)
    for cid in views:
        owner.add(cid)
        owner.views[cid].update({"pod-interface": "eth0", "ipv4": "10.200.0.9"})
    return owner


OWNER = st.builds(
    _owner,
    st.none() | st.sampled_from([0, 400, 404, 409, 500, 503]),
    st.lists(st.sampled_from(["c-1", "c-2", "x"]), max_size=2),
)

# --- what every answer must be ----------------------------------------------------------


def _strict(text: str) -> Any:
    """JSON as a strict reader (any CNI runtime) takes it: no NaN or Infinity."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def assert_cni_answer(code: int, out: str, command: str) -> None:
    assert code in (0, 1), code
    out.encode("utf-8")  # what the API sends must encode (no lone surrogates)
    if code == 1:
        err = _strict(out)
        assert set(err) <= {"cniVersion", "code", "msg", "details"}, err
        assert isinstance(err["code"], int) and not isinstance(err["code"], bool)
        assert isinstance(err["msg"], str) and err["msg"]
        assert err["cniVersion"] in SUPPORTED_VERSIONS
        assert isinstance(err.get("details", ""), str)
        return
    if command != "ADD":
        assert out == ""
        return
    res = _strict(out)
    assert res["cniVersion"] in SUPPORTED_VERSIONS
    assert isinstance(res["interfaces"], list) and isinstance(res["ips"], list)


# --- the agent's handler ----------------------------------------------------------------


@given(COMMAND, ENV, STDIN, OWNER)
def test_handler_always_answers_cni(
    command: str, env: dict[str, str], stdin: str, owner: Owner
) -> None:
    code, out = handler.run(command, env, stdin, owner)
    assert_cni_answer(code, out, command)


@given(st.sampled_from(COMMANDS), configs(), OWNER)
def test_handler_with_a_valid_environment(command: str, conf: dict[str, Any], owner: Owner) -> None:
    """Past the environment checks, so the configuration's odd fields reach ADD, CHECK, GC."""
    env = {"CNI_CONTAINERID": "c-1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0"}
    code, out = handler.run(command, env, json.dumps(conf), owner)
    assert_cni_answer(code, out, command)


async def _post(app: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, Any]:
    """One ASGI request to `app`: (status, [(header, value)], body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/cni",
        "raw_path": b"/v1/cni",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("cilia", 80),
        "client": ("cilia", 1),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], (dict(start["headers"]), out)


@scaled(0.5)
@given(COMMAND, st.dictionaries(st.sampled_from(ENVIRONMENT), ENV_VALUE), st.binary(max_size=300))
def test_api_never_answers_500(command: str, env: dict[str, str], body: bytes) -> None:
    """`POST /v1/cni` with any header bytes and body: always 200 with Cni-Exit."""
    from fastapi import FastAPI

    from cilia.agent.api_cni import cni_router

    app = FastAPI()
    app.include_router(cni_router(Owner()))
    headers = [
        (name.replace("_", "-").lower().encode(), value.encode("utf-8", "surrogateescape"))
        for name, value in {"CNI_COMMAND": command, **env}.items()
    ]
    status, (fields, out) = asyncio.run(_post(app, headers, body))
    assert status == 200, out
    assert_cni_answer(int(fields[b"cni-exit"]), out.decode(), command)


# --- the plugin -------------------------------------------------------------------------


class FakeAgent(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Reads one `POST /v1/cni` per connection and answers `reply`: None to relay it to
    `handler.run` on an Owner (as the agent does), else those bytes."""

    daemon_threads = True
    reply: bytes | None = None


class _Exchange(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, FakeAgent)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        while len(body) < int(fields["content-length"]):
            chunk = self.request.recv(65536)
            if not chunk:
                return
            body += chunk
        if server.reply is not None:
            self.request.sendall(server.reply)
            return

        def header(name: str) -> str:
            return (
                fields.get(name.replace("_", "-").lower(), "")
                .encode("latin-1")
                .decode("utf-8", "surrogateescape")
            )

        env = {name: header(name) for name in ENVIRONMENT}
        code, out = handler.run(
            header("CNI_COMMAND"), env, body.decode("utf-8", "replace"), Owner()
        )
        data = out.encode()
        self.request.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Cni-Exit: %d\r\nContent-Length: %d\r\n\r\n%s" % (code, len(data), data)
        )


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeAgent, Path]]:
    base = tmp_path_factory.mktemp("cni-fuzz")
    server = FakeAgent(str(base / "agent.sock"), _Exchange)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, base
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        (base / "agent.sock").unlink(missing_ok=True)


def run_plugin(
    command: str, env: dict[str, str], stdin: bytes, safe: list[str], absent: str
) -> tuple[int, str]:
    """plugin.main() in this process: (exit code, stdout). It only ever talks to the
    sockets in `safe`; any other existing path is swapped for `absent`."""
    real = plugin._exchange

    def guarded(path: str, request: bytes) -> bytes:
        if path not in safe and os.path.exists(path):
            path = absent
        return real(path, request)

    out = io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    environ.update(env)
    if command:
        environ["CNI_COMMAND"] = command
    with (
        mock.patch.dict(os.environ, environ, clear=True),
        mock.patch.object(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin))),
        mock.patch.object(sys, "stdout", stdout),
        mock.patch.object(plugin, "_exchange", guarded),
        mock.patch.object(plugin, "DEFAULT_AGENT_SOCKET", absent),
    ):
        try:
            plugin.main()
        except SystemExit as exc:
            code = exc.code
        else:
            raise AssertionError("plugin.main() returned without sys.exit")
    stdout.flush()
    assert isinstance(code, int)
    return code, out.getvalue().decode("utf-8")


SOCKETS = ["ours", "absent", "relative", "dir", "long", "surrogate", "nul", "number", None]


def _with_socket(stdin: str, which: str | None, sock: str, base: Path) -> bytes:
    """Point a JSON object's agent-socket at `which`; anything else is left as it is."""
    try:
        conf = json.loads(stdin)
    except (ValueError, RecursionError):
        return stdin.encode("utf-8", "surrogateescape")
    if isinstance(conf, dict) and which is not None:
        conf["agent-socket"] = {
            "ours": sock,
            "absent": str(base / "absent.sock"),
            "relative": "agent.sock",
            "dir": str(base),
            "long": "/" + "a" * 200,
            "surrogate": "/tmp/\ud800.sock",
            "nul": f"{base}/a\x00b",
            "number": 7,
        }[which]
    return json.dumps(conf).encode()


@scaled(0.6)
@given(
    COMMAND.filter(lambda c: "\x00" not in c),
    st.dictionaries(st.sampled_from(ENVIRONMENT), ENV_VALUE.filter(lambda v: "\x00" not in v)),
    STDIN.filter(lambda s: len(s) < 50_000) | st.binary(max_size=200).map(_loose),
    st.sampled_from(SOCKETS),
    st.none() | st.binary(max_size=80) | st.sampled_from([b"HTTP/1.1 200 OK\r\nCni-Exit: 1\r\n"]),
)
def test_plugin_always_answers_cni(
    agent: tuple[FakeAgent, Path],
    command: str,
    env: dict[str, str],
    stdin: str,
    which: str | None,
    reply: bytes | None,
) -> None:
    server, base = agent
    server.reply = reply
    sock = str(base / "agent.sock")
    code, out = run_plugin(
        command, env, _with_socket(stdin, which, sock, base), [sock], str(base / "absent.sock")
    )
    if command == "VERSION":
        assert code == 0 and _strict(out)["supportedVersions"] == SUPPORTED_VERSIONS
        return
    if which == "ours" and reply is not None:  # a fake agent's answer, passed on if whole
        assert code in (0, 1)
        assert isinstance(_strict(out) if out or code else {}, dict)
    else:  # the handler's answer relayed, or the plugin's own error
        assert_cni_answer(code, out, command)


def test_plugin_surrogate_command_and_socket_are_cni_errors(
    agent: tuple[FakeAgent, Path],
) -> None:
    """Undecodable bytes in CNI_COMMAND, an unencodable agent-socket: error JSON."""
    _server, base = agent
    absent = str(base / "absent.sock")
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "cilia-cni"}
    stdin = json.dumps({**conf, "agent-socket": absent}).encode()
    code, out = run_plugin(_loose(b"AD\xff"), {}, stdin, [], absent)
    assert code == 1 and _strict(out)["code"] == 11  # relayed as bytes; no agent there
    stdin = json.dumps({**conf, "agent-socket": "/tmp/\ud800.sock"}).encode()
    code, out = run_plugin("ADD", {}, stdin, [], absent)
    assert code == 1 and _strict(out)["code"] in (5, 7)
    assert _strict(out)["cniVersion"] == "1.0.0"
