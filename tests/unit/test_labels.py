"""Labels, label sets and pod identity labels."""

from __future__ import annotations

import pytest

from cilia.labels import Label, Labels, is_security_relevant, pod_labels


def test_parse_with_source() -> None:
    assert Label.parse("k8s:app=web") == Label("k8s", "app", "web")


def test_parse_without_source_is_unspec() -> None:
    assert Label.parse("app=web") == Label("unspec", "app", "web")


def test_parse_key_only() -> None:
    label = Label.parse("reserved:host")
    assert label == Label("reserved", "host", "")
    assert str(label) == "reserved:host"


def test_parse_value_with_colon_keeps_source_unspec() -> None:
    assert Label.parse("url=http://x") == Label("unspec", "url", "http://x")


def test_str_round_trip() -> None:
    assert str(Label.parse("k8s:io.kubernetes.pod.namespace=default")) == (
        "k8s:io.kubernetes.pod.namespace=default"
    )


def test_parse_empty_key_refused() -> None:
    with pytest.raises(ValueError, match="empty key"):
        Label.parse("k8s:=x")


def test_labels_sorted_and_hashable() -> None:
    a = Labels.parse(["k8s:b=2", "k8s:a=1", "container:z=0"])
    b = Labels.parse(["container:z=0", "k8s:a=1", "k8s:b=2"])
    assert a.to_list() == ["container:z=0", "k8s:a=1", "k8s:b=2"]
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_labels_inequality_on_value_and_source() -> None:
    assert Labels.parse(["k8s:a=1"]) != Labels.parse(["k8s:a=2"])
    assert Labels.parse(["k8s:a=1"]) != Labels.parse(["container:a=1"])


def test_labels_one_per_key_later_wins() -> None:
    labels = Labels.parse(["k8s:a=1", "k8s:a=2"])
    assert labels.to_list() == ["k8s:a=2"]


def test_from_dict_and_get() -> None:
    labels = Labels.from_dict({"app": "web", "tier": "front"}, "k8s")
    assert labels.get("app") == "web"
    assert labels.get("app", "k8s") == "web"
    assert labels.get("app", "any") == "web"
    assert labels.get("app", "container") is None
    assert labels.get("missing") is None


def test_contains() -> None:
    labels = Labels.parse(["k8s:app=web", "reserved:host"])
    assert Label("k8s", "app", "web") in labels
    assert "k8s:app=web" in labels
    assert "reserved:host" in labels
    assert "k8s:app=db" not in labels
    assert "container:app=web" not in labels
    assert [str(x) for x in labels] == ["k8s:app=web", "reserved:host"]


def test_contains_all() -> None:
    labels = Labels.parse(["k8s:a=1", "k8s:b=2"])
    assert labels.contains_all(Labels.parse(["k8s:a=1"]))
    assert labels.contains_all(Labels.parse(["any:b=2"]))
    assert not labels.contains_all(Labels.parse(["unspec:a=1"]))
    assert not labels.contains_all(Labels.parse(["k8s:a=1", "k8s:c=3"]))
    assert labels.contains_all(Labels())


def test_coerce_dict_form() -> None:
    labels = Labels.coerce(["a=b", {"key": "x", "value": "y", "source": "k8s"}, {"key": "z"}])
    assert labels.to_list() == ["k8s:x=y", "unspec:a=b", "unspec:z"]


def test_coerce_dict_unknown_field() -> None:
    with pytest.raises(ValueError, match="unknown label field 'colour'"):
        Labels.coerce([{"key": "x", "colour": "red"}])


@pytest.mark.parametrize(
    ("key", "relevant"),
    [
        ("app", True),
        ("app.kubernetes.io/name", True),
        ("example.com/team", True),
        ("pod-template-hash", False),
        ("controller-revision-hash", False),
        ("pod-template-generation", False),
        ("statefulset.kubernetes.io/pod-name", False),
        ("kubernetes.io/hostname", False),
        ("node.k8s.io/x", False),
        ("io.kubernetes.pod.namespace", False),
        ("io.cilium.k8s.policy.serviceaccount", False),
    ],
)
def test_is_security_relevant(key: str, relevant: bool) -> None:
    assert is_security_relevant(key) is relevant


def test_pod_labels() -> None:
    labels = pod_labels(
        {"app": "web", "pod-template-hash": "abc", "io.kubernetes.pod.namespace": "spoof"},
        "prod",
        {"team": "a"},
        "web-sa",
    )
    assert labels.to_list() == [
        "k8s:app=web",
        "k8s:io.cilium.k8s.namespace.labels.team=a",
        "k8s:io.cilium.k8s.policy.serviceaccount=web-sa",
        "k8s:io.kubernetes.pod.namespace=prod",
    ]


def test_pod_labels_without_service_account() -> None:
    labels = pod_labels({}, "default", {}, None)
    assert labels.to_list() == ["k8s:io.kubernetes.pod.namespace=default"]
