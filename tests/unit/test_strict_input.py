"""Strict decoding of manifests, policy files and API bodies, and the input limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import yaml

from cilia.agent.server import RequestLimits
from cilia.k8s import strict_yaml
from cilia.k8s.manifests import (
    InputLimits,
    ManifestError,
    label_key_error,
    label_value_error,
    parse_manifest_files,
    parse_manifests,
)
from cilia.k8s.strict_yaml import decode_text, load_document, load_documents, load_json
from cilia.policy import ValidationError, parse_rules

POD = """apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: c
    ports: [{containerPort: 80}]
"""


DEFAULTS = InputLimits()


def refused(data: bytes | str, limits: InputLimits = DEFAULTS) -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifests(data, "pods.yaml", limits)
    return str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"kind: Pod\n\xff\n", "pods.yaml: not valid UTF-8 (byte 10)"),
        ("kind: Pod\nx: a\x00b\n", "pods.yaml: NUL character at line 2, column 5"),
        ('kind: "a\\0b"\n', "pods.yaml: document 1: invalid YAML: NUL character in a string"),
        ("kind: Pod\nkind: Pod\n", "duplicate key 'kind' (first at line 1) at line 2, column 1"),
        ("a: &x [1]\nb: *x\n", "document 1: invalid YAML: alias *x is not allowed"),
        ("[" * 65 + "]" * 65, "nested deeper than 64 levels at line 1, column 65"),
        ("a: !!binary aGk=\n", "tag 'tag:yaml.org,2002:binary' is not allowed"),
        ("a: !!python/object:os.system x\n", "is not allowed"),
        ("a: .inf\n", "not a finite number"),
        ("a: " + "9" * 5000 + "\n", "integer too long"),
        ("a: \x07\n", "unacceptable character #x0007 at line 1, column 4"),
        (POD + "---\n{a: 1, a: 2}\n", "pods.yaml: document 2: invalid YAML: duplicate key 'a'"),
    ],
)
def test_refused_yaml_names_source_document_and_problem(data: bytes | str, message: str) -> None:
    assert message in refused(data)


@pytest.fixture(params=["libyaml", "python"])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of parsing: libyaml events (when PyYAML has it) and pure Python."""
    if request.param == "python":
        monkeypatch.setattr(strict_yaml, "_Events", strict_yaml._PythonEvents)
    return str(request.param)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Pod\nkind: Pod\n", "duplicate key 'kind' (first at line 1) at line 2, column 1"),
        (
            "a: &x [1]\nb: *x\n",
            "alias *x is not allowed (no anchors or aliases) at line 2, column 4",
        ),
        ("[" * 65 + "]" * 65, "nested deeper than 64 levels at line 1, column 65"),
        ("a: \x07\n", "unacceptable character #x0007 at line 1, column 4"),
        ('a: "\\ud800"\n', "lone surrogate in a string at line 1, column 4"),
        ("a: [\n", "document 1: invalid YAML: "),
    ],
)
def test_both_loaders_refuse_alike(loader: str, text: str, message: str) -> None:
    assert message in refused(text)
    assert load_documents(POD, "x") == [yaml.safe_load(POD)]


def test_json_escapes_beyond_the_bmp(loader: str) -> None:
    value = {"a": "\U0001f600 ok", "b": ["\u00e9"]}
    assert load_documents(json.dumps(value), "x") == [value]  # "\\ud83d\\ude00"


def test_json_text_is_yaml() -> None:
    [pod] = parse_manifests(json.dumps(json.loads(json.dumps(_pod_dict()))), "p.json")
    assert pod.display == "Pod default/web"


def _pod_dict() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "c"}]},
    }


def test_timestamps_merge_keys_and_equals_stay_plain() -> None:
    docs = load_documents("a: 2001-12-14\n<<: {b: 1}\nc: =\n", "x")
    assert docs == [{"a": "2001-12-14", "<<": {"b": 1}, "c": "="}]


def test_empty_documents_and_empty_input() -> None:
    assert load_documents("", "x") == []
    assert load_documents("---\n---\n", "x") == [None, None]
    assert parse_manifests("# nothing\n", "x") == []
    assert load_document("", "x") is None
    with pytest.raises(ManifestError, match="expected one document, found 2"):
        load_document("a: 1\n---\nb: 2\n", "x")


def test_bom_is_accepted() -> None:
    assert load_documents("\ufeffa: 1\n".encode(), "x") == [{"a": 1}]


def test_lone_surrogate_is_refused() -> None:
    with pytest.raises(ManifestError, match="lone surrogate"):
        decode_text("a: \ud800", "x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('{"a": "\\u0000"}', "NUL character in a string"),
        ('{"a": "\\ud83d"}', "lone surrogate in a string"),
        ("[" * 65 + "]" * 65, "nested deeper than 64 levels"),
        ('{"a": NaN}', "NaN is not a number JSON allows"),
        ('{"a": 1e999}', "too large a number"),
        ('{"a": ' + "9" * 5000 + "}", "invalid JSON"),
        ('{"a": 1', "invalid JSON: Expecting"),
        (b'{"a": "\xff"}', "not valid UTF-8"),
    ],
)
def test_strict_json(text: str | bytes, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_json(text, "request body")
    assert str(info.value).startswith("request body: ")
    assert message in str(info.value)


def test_json_brackets_in_strings_do_not_count_as_nesting() -> None:
    value = {"a": "[" * 1000, "b": '"\\"{{{{', "c": [[[1]]]}
    assert load_json(json.dumps(value), "b") == value
    assert load_json('"\\\\u0000"', "b") == "\\u0000"  # an escaped backslash, not a NUL


def test_json_depth_scan_is_linear_on_unterminated_strings() -> None:
    with pytest.raises(ManifestError):
        load_json('"\\"' * 200_000 + "\\", "b")


@pytest.mark.parametrize(
    "key",
    [
        "app",
        "a",
        "A-b_c.9",
        "example.com/app",
        "a.b-c/X_y",
        "k8s.io/" + "n" * 63,
        ("a" * 63 + ".") * 3 + "b" * 61 + "/name",
    ],
)
def test_valid_label_keys(key: str) -> None:
    assert label_key_error(key) is None


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "the name must be"),
        ("-app", "the name must be"),
        ("app-", "the name must be"),
        ("a b", "the name must be"),
        ("n" * 64, "the name must be"),
        ("/app", "the prefix must be"),
        ("Example.com/app", "the prefix must be"),
        ("ex_ample.com/app", "the prefix must be"),
        ("a/b/c", "the prefix must be"),
        ("example.com/", "the name must be"),
        (("a" * 63 + ".") * 4 + "/name", "the prefix must be"),
        ("k8s:app", "the name must be"),
    ],
)
def test_invalid_label_keys(key: str, why: str) -> None:
    error = label_key_error(key)
    assert error is not None and why in error


def test_label_values() -> None:
    assert label_value_error("") is None
    assert label_value_error("v" * 63) is None
    assert label_value_error("A.b-c_D") is None
    for bad in ("v" * 64, "-v", "v-", "a/b", "a b"):
        assert label_value_error(bad) is not None


def test_long_label_keys_are_shortened_in_messages() -> None:
    long_key = "\n    ? " + "k" * 10_000 + "\n    : web"  # a simple key has at most 1024
    message = refused(POD.replace(" {app: web}", long_key))
    assert "metadata.labels: invalid label key 'kkkk" in message
    assert len(message) < 400


def test_label_errors_in_manifests() -> None:
    assert "metadata.labels.Bad_/x: invalid label key 'Bad_/x': the prefix must be" in refused(
        POD.replace("{app: web}", "{'Bad_/x': web}")
    )
    assert "metadata.labels.app: invalid label value" in refused(
        POD.replace("{app: web}", "{app: '%s'}" % ("v" * 64))
    )


def test_labels_per_object_limit() -> None:
    labels = "{" + ", ".join(f"l{i}: v" for i in range(5)) + "}"
    text = POD.replace("{app: web}", labels)
    assert parse_manifests(text, "p", InputLimits(max_labels=5))
    assert refused(text, InputLimits(max_labels=4)) == (
        "pods.yaml: document 1 (Pod default/web): metadata.labels: more than 4 labels "
        "(limit max_labels_per_object)"
    )


def test_rules_per_policy_limit() -> None:
    rule = "{endpointSelector: {}, ingress: [{}]}"
    cnp = (
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\n"
        f"spec: {rule}\nspecs: [{rule}, {rule}]\n"
    )
    assert parse_manifests(cnp, "p", InputLimits(max_rules=3))
    assert "specs: more than 2 rules (limit max_rules_per_policy)" in refused(
        cnp, InputLimits(max_rules=2)
    )
    rules = [{"endpointSelector": {}}] * 3
    assert len(parse_rules(rules, max_rules=3)) == 3
    with pytest.raises(ValidationError, match="more than 2 rules"):
        parse_rules(rules, max_rules=2)


def test_objects_per_request_limit_counts_every_file() -> None:
    def ns(name: str) -> str:
        return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"

    files = [("a.yaml", ns("a") + "---\n" + ns("b")), ("b.yaml", ns("c"))]
    assert len(parse_manifest_files(files, InputLimits(max_objects=3))) == 3
    with pytest.raises(ManifestError) as info:
        parse_manifest_files(files, InputLimits(max_objects=2))
    assert str(info.value) == (
        "b.yaml: document 1: more than 2 objects in one request (limit max_objects_per_request)"
    )


def test_same_object_in_two_files_is_refused() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest_files([("a.yaml", POD), ("b.yaml", "---\n---\n" + POD)])
    assert str(info.value) == "b.yaml: document 2 (Pod default/web): duplicate of a.yaml document 1"


def test_nesting_limit_is_configurable() -> None:
    text = "a: " + "[" * 10 + "]" * 10
    assert load_documents(text, "x", max_depth=11)
    with pytest.raises(ManifestError, match="nested deeper than 10 levels"):
        load_documents(text, "x", max_depth=10)


# The API's body limits, driven as an ASGI application without a server.


class Recorder:
    def __init__(self) -> None:
        self.calls = 0
        self.body = b""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        message = await receive()
        self.body = message["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _run(
    app: RequestLimits, chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[str, Any], int]:
    """(status, JSON answer, chunks read) of one request sent in `chunks`."""
    sent: list[Any] = []
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read >= len(chunks):
            return {"type": "http.disconnect"}
        read += 1
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/x", "headers": headers}
    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(body), read


def test_content_length_over_limit_is_refused_before_reading() -> None:
    inner = Recorder()
    app = RequestLimits(inner, max_bytes=1024, max_depth=64)
    status, answer, read = _run(app, [b"x" * 2048], [(b"content-length", b"2048")])
    assert (status, read, inner.calls) == (413, 0, 0)
    assert "larger than 1024 bytes" in answer["error"]
    assert "CILIA_MAX_REQUEST_BODY_BYTES" in answer["error"]


def test_streamed_body_is_counted_and_refused_once_over() -> None:
    inner = Recorder()
    app = RequestLimits(inner, max_bytes=1024, max_depth=64)
    status, _, read = _run(app, [b"x" * 400] * 10, [(b"transfer-encoding", b"chunked")])
    assert (status, read, inner.calls) == (413, 3, 0)


def test_json_body_within_limit_is_checked_then_replayed() -> None:
    inner = Recorder()
    app = RequestLimits(inner, max_bytes=1024, max_depth=64)
    body = b'{"text": "a", "source": "s"}'
    status, _, _ = _run(app, [body[:5], body[5:]], [(b"content-type", b"application/json")])
    assert (status, inner.body) == (200, body)
    status, answer, _ = _run(app, [b'{"a": 1, "a": 2}'], [])
    assert status == 400 and answer == {"error": "request body: invalid JSON: duplicate key 'a'"}
    status, _, _ = _run(app, [b"\xff"], [(b"content-type", b"text/plain")])
    assert status == 200  # not JSON: the route decides


def test_documents_are_built_without_a_node_tree() -> None:
    """Memory stays near the size of the value: a node tree would take some 400 bytes
    per scalar (about 12 MB here)."""
    import tracemalloc

    text = "a:\n" + "- 1\n" * 30_000
    tracemalloc.start()
    try:
        [doc] = load_documents(text, "x")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert doc == {"a": [1] * 30_000}
    assert peak < 4_000_000, peak
