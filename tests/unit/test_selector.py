"""Label selectors: matching, source prefixes, validation and namespace scoping."""

from __future__ import annotations

from typing import Any

import pytest

from cilia.labels import Labels, LabelSelector, ValidationError

WEB = Labels.parse(["k8s:app=web", "k8s:tier=front", "container:env=prod"])


def sel(obj: dict[str, Any]) -> LabelSelector:
    return LabelSelector.from_dict(obj, "sel")


def test_empty_selects_everything() -> None:
    assert sel({}).matches(WEB)
    assert sel({}).matches(Labels())
    assert sel({}).is_empty


def test_match_labels() -> None:
    assert sel({"matchLabels": {"app": "web"}}).matches(WEB)
    assert not sel({"matchLabels": {"app": "db"}}).matches(WEB)
    assert not sel({"matchLabels": {"app": "web", "tier": "back"}}).matches(WEB)


def test_source_prefix() -> None:
    assert sel({"matchLabels": {"k8s:app": "web"}}).matches(WEB)
    assert sel({"matchLabels": {"any:app": "web"}}).matches(WEB)
    assert not sel({"matchLabels": {"container:app": "web"}}).matches(WEB)
    assert sel({"matchLabels": {"container:env": "prod"}}).matches(WEB)
    assert not sel({"matchLabels": {"k8s:env": "prod"}}).matches(WEB)


def test_reserved_key_form() -> None:
    host = Labels.parse(["reserved:host"])
    assert sel({"matchLabels": {"reserved:host": ""}}).matches(host)
    assert not sel({"matchLabels": {"reserved:host": ""}}).matches(WEB)
    assert not sel({"matchLabels": {"reserved:world": ""}}).matches(host)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ({"key": "app", "operator": "In", "values": ["web", "db"]}, True),
        ({"key": "app", "operator": "In", "values": ["db"]}, False),
        ({"key": "app", "operator": "NotIn", "values": ["db"]}, True),
        ({"key": "app", "operator": "NotIn", "values": ["web"]}, False),
        ({"key": "missing", "operator": "NotIn", "values": ["x"]}, True),
        ({"key": "app", "operator": "Exists"}, True),
        ({"key": "missing", "operator": "Exists"}, False),
        ({"key": "missing", "operator": "DoesNotExist"}, True),
        ({"key": "app", "operator": "DoesNotExist"}, False),
        ({"key": "k8s:env", "operator": "Exists"}, False),
        ({"key": "container:env", "operator": "In", "values": ["prod"]}, True),
    ],
)
def test_match_expressions(expr: dict[str, Any], expected: bool) -> None:
    assert sel({"matchExpressions": [expr]}).matches(WEB) is expected


def test_equality_and_hash_ignore_order() -> None:
    a = sel({"matchLabels": {"a": "1", "b": "2"}})
    b = sel({"matchLabels": {"b": "2", "a": "1"}})
    assert a == b
    assert hash(a) == hash(b)
    assert a != sel({"matchLabels": {"a": "1"}})


def test_to_dict_round_trip() -> None:
    obj = {
        "matchLabels": {"k8s:app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "x", "operator": "Exists"},
        ],
    }
    assert sel(obj).to_dict() == obj
    assert sel({}).to_dict() == {}


@pytest.mark.parametrize(
    ("obj", "path", "reason"),
    [
        ({"matchLabel": {}}, "sel.matchLabel", "unknown field"),
        ("x", "sel", "must be an object"),
        ({"matchLabels": []}, "sel.matchLabels", "must be an object"),
        ({"matchLabels": {"app": 1}}, "sel.matchLabels.app", "must be a string"),
        (
            {"matchLabels": {"bad key": "x"}},
            "sel.matchLabels.bad key",
            "invalid label key 'bad key'",
        ),
        (
            {"matchLabels": {"a": "bad value"}},
            "sel.matchLabels.a",
            "invalid label value 'bad value'",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]},
            "sel.matchExpressions[0].operator",
            '"Equals" is not a valid label selector operator',
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In"}]},
            "sel.matchExpressions[0].values",
            "must be specified when `operator` is 'In' or 'NotIn'",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            "sel.matchExpressions[0].values",
            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        ),
        (
            {"matchExpressions": [{"operator": "Exists"}]},
            "sel.matchExpressions[0].key",
            "field required",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "value": "x"}]},
            "sel.matchExpressions[0].value",
            "unknown field",
        ),
    ],
)
def test_validation_errors(obj: Any, path: str, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        LabelSelector.from_dict(obj, "sel")
    assert info.value.path == path
    assert info.value.reason == reason
    assert str(info.value) == f"{path}: {reason}"


def test_with_namespace() -> None:
    scoped = sel({"matchLabels": {"app": "web"}}).with_namespace("prod")
    assert scoped.to_dict() == {
        "matchLabels": {"app": "web", "k8s:io.kubernetes.pod.namespace": "prod"}
    }
    assert scoped.matches(Labels.parse(["k8s:app=web", "k8s:io.kubernetes.pod.namespace=prod"]))
    assert not scoped.matches(Labels.parse(["k8s:app=web", "k8s:io.kubernetes.pod.namespace=dev"]))


def test_with_namespace_leaves_reserved_and_explicit_namespace() -> None:
    reserved = sel({"matchLabels": {"reserved:host": ""}})
    assert reserved.with_namespace("prod") is reserved
    explicit = sel({"matchLabels": {"k8s:io.kubernetes.pod.namespace": "dev"}})
    assert explicit.with_namespace("prod") is explicit
    by_ns_labels = sel({"matchLabels": {"io.cilium.k8s.namespace.labels.team": "a"}})
    assert by_ns_labels.with_namespace("prod") is by_ns_labels


def test_merged_and_prefixed() -> None:
    merged = sel({"matchLabels": {"app": "web"}}).merged(sel({"matchLabels": {"tier": "x"}}))
    assert merged == sel({"matchLabels": {"app": "web", "tier": "x"}})
    prefixed = sel({"matchExpressions": [{"key": "a", "operator": "Exists"}]}).prefixed("k8s:")
    assert prefixed.to_dict() == {"matchExpressions": [{"key": "k8s:a", "operator": "Exists"}]}
