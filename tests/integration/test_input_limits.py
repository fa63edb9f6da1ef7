"""Input and resource bounds against a running agent: strict manifests over the CLI and
the API, whole-request validation of apply and delete, the request body limit (and the
agent's memory under an oversized body), and hypothesis-generated bodies that must
never be answered with a 500."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cilia.unix_http import Connection
from tests.integration.harness import Cilia, running_agent
from tests.unit.test_manifest_properties import json_values, manifests, rules

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

MAX_OBJECTS = 5
BODY_LIMIT = 4 * 1024 * 1024  # the default


@pytest.fixture(scope="module")
def cilia(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cilia]:
    with running_agent(
        tmp_path_factory.mktemp("limits"), CILIA_MAX_OBJECTS_PER_REQUEST=str(MAX_OBJECTS)
    ) as agent:
        yield agent


def _namespace(name: str) -> str:
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"


def _namespaces(cilia: Cilia) -> set[str]:
    return {i["name"] for i in cilia.client.request("GET", "/objects/namespaces")}


def _post(cilia: Cilia, method: str, path: str, body: bytes) -> tuple[int, Any]:
    with Connection(str(cilia.config.socket_path), timeout=60) as conn:
        resp = conn.request(method, path, body, {"Content-Type": "application/json"})
        data = resp.read()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data


def test_empty_input_is_an_error(cilia: Cilia, tmp_path: Path) -> None:
    for action in ("apply", "delete"):
        for text in ("", "# only a comment\n", "---\n---\n"):
            res = cilia.run(action, "-f", "-", input=text, check=False)
            assert res.code == 1, res
            assert f"no objects passed to {action}" in res.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    res = cilia.run("apply", "-f", str(empty), check=False)
    assert res.code == 1 and "no objects passed to apply" in res.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apiVersion: v1\napiVersion: v1\n", "<stdin>: document 1: invalid YAML: duplicate key"),
        ("a: &x [1]\nb: *x\n", "alias *x is not allowed"),
        ("a: " + "[" * 100 + "]" * 100, "nested deeper than 64 levels"),
        ('a: "\\0"\n', "NUL character in a string"),
    ],
)
def test_strict_yaml_over_the_cli(cilia: Cilia, text: str, message: str) -> None:
    res = cilia.run("apply", "-f", "-", input=text, check=False)
    assert res.code == 1 and message in res.stderr, res.stderr


def test_files_that_are_not_utf8_are_named(cilia: Cilia, tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"apiVersion: v1\nkind: Namespace\nmetadata: {name: caf\xe9}\n")
    for args in (("apply", "-f", str(bad)), ("policy", "import", str(bad))):
        res = cilia.run(*args, check=False)
        assert res.code == 1 and f"{bad}: not valid UTF-8 (byte 51)" in res.stderr, res.stderr


def test_policy_import_is_strict(cilia: Cilia, tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.json"
    rules_file.write_text('[{"endpointSelector": {}, "endpointSelector": {}}]')
    res = cilia.run("policy", "import", str(rules_file), check=False)
    assert res.code == 1
    assert f"{rules_file}: document 1: invalid YAML: duplicate key 'endpointSelector'" in (
        res.stderr
    )
    rules_file.write_text('[{"endpointSelector": {"matchLabels": {"app": "x"}}}]')
    assert (
        "All policy elements are valid (1 rules)."
        in cilia.run("policy", "validate", str(rules_file)).stdout
    )


def test_apply_and_delete_validate_every_file_first(cilia: Cilia, tmp_path: Path) -> None:
    name = f"keep-{cilia.tag}"
    good = tmp_path / "good.yaml"
    good.write_text(_namespace(name))
    bad = tmp_path / "bad.yaml"
    bad.write_text(_namespace("Not_A_Name"))
    res = cilia.run("apply", "-f", str(good), "-f", str(bad), check=False)
    assert res.code == 1 and f"{bad}: document 1 (Namespace Not_A_Name)" in res.stderr
    assert name not in _namespaces(cilia)
    cilia.run("apply", "-f", str(good))
    res = cilia.run("delete", "-f", str(good), "-f", str(bad), check=False)
    assert res.code == 1 and "metadata.name: invalid name" in res.stderr
    assert name in _namespaces(cilia)  # nothing deleted
    twice = cilia.run("delete", "-f", str(good), "-f", str(good), check=False)
    assert twice.code == 1 and "duplicate of" in twice.stderr
    assert name in _namespaces(cilia)
    assert f"namespace/{name} deleted" in cilia.run("delete", "-f", str(good)).stdout
    assert name not in _namespaces(cilia)


def test_objects_per_request(cilia: Cilia) -> None:
    docs = [_namespace(f"n{i}-{cilia.tag}") for i in range(MAX_OBJECTS + 1)]
    res = cilia.apply("---\n".join(docs), check=False)
    assert res.code == 1
    assert f"more than {MAX_OBJECTS} objects in one request" in res.stderr, res.stderr
    assert not any(n.endswith(cilia.tag) for n in _namespaces(cilia))


def test_body_over_the_limit_by_content_length(cilia: Cilia, tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * BODY_LIMIT + "\n" + _namespace(f"big-{cilia.tag}"))
    res = cilia.run("apply", "-f", str(big), check=False)
    assert res.code == 1
    assert f"request body larger than {BODY_LIMIT} bytes" in res.stderr, res.stderr
    status, answer = _post(cilia, "POST", "/v1/objects/validate", b"x" * (BODY_LIMIT + 1))
    assert status == 413 and "CILIA_MAX_REQUEST_BODY_BYTES" in answer["error"]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_streamed_body_keeps_memory_bounded(cilia: Cilia) -> None:
    """64 MiB sent with chunked transfer coding: refused once past the limit, and the
    agent's resident memory grows by less than 8 MB while it happens."""
    pid = int(cilia.config.pid_file.read_text())
    cilia.client.request("GET", "/healthz")
    before = _rss_kib(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_kib(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sent = 0
    answer = b""
    try:
        sock.settimeout(30)
        sock.connect(str(cilia.config.socket_path))
        sock.sendall(
            b"POST /v1/objects/apply HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n" % 65536 + b"[" * 65536 + b"\r\n"
        try:
            while sent < 64 * 1024 * 1024:
                sock.sendall(chunk)
                sent += 65536
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before the end, as it should
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    finally:
        sock.close()
        done.set()
        sampler.join()
    after = _rss_kib(pid)
    assert sent < 64 * 1024 * 1024, "the agent read the whole body"
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"request body larger than" in answer
    assert peak - before < 8 * 1024, (before, peak, after)
    assert cilia.client.request("GET", "/healthz")["status"] == "ok"


SAFE_KINDS = {"Namespace", "NetworkPolicy", "CiliumNetworkPolicy"}
dns_names = st.from_regex(r"\Afz[a-z0-9]{1,8}\Z")
valid_namespaces = st.builds(
    lambda name, app: {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"app": app}},
    },
    dns_names,
    dns_names,
)
valid_rules = st.builds(
    lambda app: {"endpointSelector": {"matchLabels": {"app": app}}, "ingress": [{}]}, dns_names
)


def _key(doc: dict[str, Any]) -> str:
    """Kind, namespace and name (generated junk may have replaced the metadata)."""
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    return repr((doc.get("kind"), meta.get("namespace"), meta.get("name")))


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(method, path, body) for the objects and policy API, mostly well-formed JSON."""
    generated = draw(st.lists(manifests() | valid_namespaces, max_size=3, unique_by=_key))
    docs = [d for d in generated if d["kind"] in SAFE_KINDS]
    text = draw(
        st.just(yaml.safe_dump_all(docs))
        | st.just("\n---\n".join(json.dumps(d) for d in docs))
        | st.text(max_size=200)
    )
    route = draw(
        st.sampled_from(
            [
                ("POST", "/v1/objects/validate"),
                ("POST", "/v1/objects/apply"),
                ("POST", "/v1/objects/delete"),
                ("POST", "/v1/policy/validate"),
                ("PUT", "/v1/policy"),
            ]
        )
    )
    if route[1].startswith("/v1/objects"):
        payload: Any = draw(
            st.sampled_from(
                [
                    {"text": text, "source": "fuzz"},
                    {"files": [{"text": text, "source": "a"}, {"text": text, "source": "b"}]},
                    {"text": text, "files": "x"},
                ]
            )
        )
    else:
        payload = draw(
            st.fixed_dictionaries(
                {"rules": st.lists(rules | valid_rules, max_size=3) | json_values}
            )
            | st.just({"text": text, "source": "fuzz"})
        )
    body = draw(
        st.just(json.dumps(payload).encode())
        | st.builds(lambda v: json.dumps(v).encode(), json_values)
        | st.binary(max_size=200)
    )
    return route[0], route[1], body


@settings(
    max_examples=max(10, settings.default.max_examples // 4),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(bodies())
def test_generated_bodies_are_never_a_server_error(
    cilia: Cilia, request_: tuple[str, str, bytes]
) -> None:
    method, path, body = request_
    status, answer = _post(cilia, method, path, body)
    event(f"{path} {status}")  # shown by --hypothesis-show-statistics
    assert status < 500, (status, answer)
    if status >= 400:
        assert isinstance(answer, dict) and ("error" in answer or "detail" in answer)


def test_fuzzed_state_is_cleaned_up(cilia: Cilia) -> None:
    cilia.reset()
    assert cilia.client.request("GET", "/policy")["rules"] == []
