"""The key form of label sets and the identity key layout."""

from __future__ import annotations

import pytest

from cilia.kvstore.keys import IdentityKeys, decode_labels, encode_labels
from cilia.labels import Label, Labels


def test_reference_format_for_ordinary_labels() -> None:
    lbls = Labels.parse(["k8s:io.kubernetes.pod.namespace=default", "k8s:app=web", "reserved:x"])
    assert encode_labels(lbls) == "k8s:app=web;k8s:io.kubernetes.pod.namespace=default;reserved:x=;"


def test_order_of_input_does_not_matter() -> None:
    a = Labels.parse(["k8s:b=2", "k8s:a=1", "container:c=3"])
    b = Labels.parse(["container:c=3", "k8s:a=1", "k8s:b=2"])
    assert encode_labels(a) == encode_labels(b)


@pytest.mark.parametrize(
    "labels",
    [
        Labels(),
        Labels([Label("k8s", "app.kubernetes.io/name", "web")]),
        Labels([Label("k8s", "a", "x;k8s:b=y")]),
        Labels([Label("k8s", "a", "b=c"), Label("k8s", "d", "")]),
        Labels([Label("we:ird", "k=ey", "v/a;l%ue 1\n")]),
        Labels([Label("k8s", "naïve", "日本")]),
    ],
)
def test_round_trip_and_no_separator_leaks(labels: Labels) -> None:
    encoded = encode_labels(labels)
    assert decode_labels(encoded) == labels
    assert "/" not in encoded and " " not in encoded and "\n" not in encoded
    assert encoded.count(";") == len(labels)


def test_distinct_label_sets_never_share_a_reference_prefix() -> None:
    keys = IdentityKeys("p/")
    one = Labels([Label("k8s", "a", "x;k8s:b=y")])
    two = Labels([Label("k8s", "a", "x"), Label("k8s", "b", "y")])
    assert encode_labels(one) != encode_labels(two)
    p1, p2 = keys.references(encode_labels(one)), keys.references(encode_labels(two))
    assert not p1.startswith(p2) and not p2.startswith(p1)


@pytest.mark.parametrize("text", ["k8s:a=b", "k8s:a;", "k8s=a;", ":=;"])
def test_invalid_encodings_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        decode_labels(text)


def test_key_layout() -> None:
    keys = IdentityKeys()
    assert keys.master(256) == "cilia/state/identities/v1/id/256"
    assert keys.reference("k8s:app=web;", "node-1") == (
        "cilia/state/identities/v1/value/k8s:app=web;/node-1"
    )
    assert keys.parse_master("cilia/state/identities/v1/id/300") == 300
    assert keys.parse_master("cilia/state/identities/v1/id/x3") is None
    assert keys.parse_master("cilia/state/identities/v1/id/²") is None
    assert keys.parse_master("other/id/300") is None
    assert keys.parse_reference("cilia/state/identities/v1/value/k8s:a=b;/n1") == (
        "k8s:a=b;",
        "n1",
    )
    assert keys.parse_reference("cilia/state/identities/v1/value/nonode") is None
