"""Node records: their JSON, keys and health."""

from __future__ import annotations

import json

import pytest

from cilia.kvstore.nodes import NodeInfo, node_key, pod_cidr_key
from cilia.router import node_ipv6_range


def test_node_record_json_round_trips_with_reference_like_names() -> None:
    node = NodeInfo(
        name="n1",
        underlay_ip="198.18.0.1",
        pod_cidr="10.208.3.0/24",
        router_ip="10.208.3.254",
        heartbeat=100.0,
    )
    assert json.loads(node.to_json()) == {
        "Name": "n1",
        "Cluster": "default",
        "UnderlayIP": "198.18.0.1",
        "IPv4AllocCIDR": "10.208.3.0/24",
        "IPv4RouterIP": "10.208.3.254",
        "IPv6AllocCIDR": "",
        "Heartbeat": 100.0,
        "HeartbeatInterval": 10.0,
    }
    assert NodeInfo.from_json(node.to_json()) == node
    dual = node.model_copy(update={"ipv6_cidr": "fd00:c1a::3:0:0/96"})
    assert NodeInfo.from_json(dual.to_json()).router6 == "fd00:c1a::3:ffff:ffff"


def test_a_nodes_ipv6_range_has_the_index_of_its_ipv4_range() -> None:
    assert node_ipv6_range("10.208.0.0/12", "10.208.0.0/24", "fd00:c1a::/64") == "fd00:c1a::/96"
    assert node_ipv6_range("10.208.0.0/12", "10.208.3.0/24", "fd00:c1a::/64") == (
        "fd00:c1a::3:0:0/96"
    )
    last = node_ipv6_range("10.208.0.0/12", "10.223.255.0/24", "fd00:c1a::/64")
    assert last == "fd00:c1a::fff:0:0/96"


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"Name": "n1"}',
        b'{"Name": "n1", "UnderlayIP": "x", "IPv4AllocCIDR": "10.0.0.0/24"}',
        b'{"Name": "n1", "UnderlayIP": "10.0.0.1", "IPv4AllocCIDR": "10.0.0.1/24"}',
        b'{"Name": "n1", "UnderlayIP": "10.0.0.1", "IPv4AllocCIDR": "10.0.0.0/24",'
        b' "IPv4RouterIP": "10.0.1.1"}',
    ],
)
def test_bad_records_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        NodeInfo.from_json(raw)


def test_health_is_stale_after_three_missed_heartbeats() -> None:
    node = NodeInfo(
        name="n1",
        underlay_ip="198.18.0.1",
        pod_cidr="10.208.3.0/24",
        heartbeat=1000.0,
        heartbeat_interval=5.0,
    )
    assert node.health(now=1014.9) == "ok"
    assert node.health(now=1015.0) == "stale"


def test_keys() -> None:
    assert node_key("n1") == "cilia/state/nodes/v1/default/n1"
    assert pod_cidr_key("10.208.3.0/24", root="t/") == "t/cilia/state/podcidrs/v1/10.208.3.0-24"
    with pytest.raises(ValueError):
        pod_cidr_key("10.208.3.1/24")
