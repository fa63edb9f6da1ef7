"""Pod placement: spec.nodeName pins, otherwise the least loaded node, ties by name."""

from __future__ import annotations

import pytest

from cilia.k8s.manifests import Pod, parse_manifest
from cilia.kvstore.scheduling import PlacementError, pinned_node, place, place_all


def pod(name: str, node: str | None = None) -> Pod:
    """A pod, pinned to `node` by spec.nodeName when given."""
    spec: dict[str, object] = {"containers": [{"name": "c", "command": ["sleep", "1"]}]}
    if node is not None:
        spec["nodeName"] = node
    parsed = parse_manifest(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    )
    assert isinstance(parsed, Pod)
    return parsed


def test_fewest_pods_wins() -> None:
    assert place(pod("a"), ["n1", "n2", "n3"], {"n1": 2, "n2": 1, "n3": 3}) == "n2"


def test_ties_go_by_name_and_unknown_counts_are_zero() -> None:
    assert place(pod("a"), ["n3", "n2", "n1"], {}) == "n1"
    assert place(pod("a"), ["n3", "n2", "n1"], {"n1": 1}) == "n2"


def test_node_name_pins_even_a_loaded_node() -> None:
    assert pinned_node(pod("a", "n3")) == "n3"
    assert pinned_node(pod("a")) is None
    assert place(pod("a", "n3"), ["n1", "n2", "n3"], {"n3": 50}) == "n3"


def test_unknown_node_name_names_pod_and_field() -> None:
    with pytest.raises(PlacementError, match=r"pod/default/a: spec.nodeName 'n9'.*n1, n2"):
        place(pod("a", "n9"), ["n2", "n1"], {})


def test_no_node_is_an_error() -> None:
    with pytest.raises(PlacementError, match="pod/default/a: the cluster has no node"):
        place(pod("a"), [], {})


def test_batch_spreads_and_counts_each_choice() -> None:
    pods = [pod(f"p{i}") for i in range(5)]
    chosen = place_all(pods, ["n1", "n2"], {"Pod/default/old": "n1"})
    assert chosen == {
        "Pod/default/p0": "n2",
        "Pod/default/p1": "n1",
        "Pod/default/p2": "n2",
        "Pod/default/p3": "n1",
        "Pod/default/p4": "n2",
    }


def test_batch_keeps_placed_pods_unless_their_node_is_gone_or_pinned_elsewhere() -> None:
    placed = {"Pod/default/a": "n2", "Pod/default/b": "gone", "Pod/default/c": "n1"}
    chosen = place_all([pod("a"), pod("b"), pod("c", "n2")], ["n1", "n2"], placed)
    assert chosen == {"Pod/default/a": "n2", "Pod/default/b": "n1", "Pod/default/c": "n2"}
