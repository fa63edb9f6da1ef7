"""The node's router address: configurable inside the pod range, changed across a restart."""

from __future__ import annotations

import re
from typing import Any

import pytest

from cilia.agent.config import AgentConfig
from cilia.agent.errors import AgentError
from cilia.agent.router import router_change
from cilia.kvstore.nodes import NodeInfo
from cilia.router import default_router_ip, router_ip_problem

CIDR = "10.9.8.0/24"


def _state(**extra: Any) -> dict[str, Any]:
    ep = {"namespace": "default", "pod": "web", "ipv4": "10.9.8.7"}
    return {"pod_cidr": CIDR, "endpoints": [ep], **extra}


def test_default_is_the_last_usable_address() -> None:
    assert default_router_ip(CIDR) == "10.9.8.254"
    assert AgentConfig(pod_cidr=CIDR).host_router_ip == "10.9.8.254"
    assert AgentConfig(pod_cidr=CIDR, router_ip="10.9.8.1").host_router_ip == "10.9.8.1"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.9.9.1", "not inside the pod range 10.9.8.0/24"),
        ("10.9.8.255", "network or broadcast"),
        ("10.9.8.0", "network or broadcast"),
        ("router", "not an IPv4 address"),
    ],
)
def test_a_router_outside_the_range_is_refused(address: str, reason: str) -> None:
    assert reason in (router_ip_problem(CIDR, address) or "")
    with pytest.raises(ValueError, match="router_ip") as err:
        AgentConfig(pod_cidr=CIDR, router_ip=address)
    assert reason in str(err.value)


def test_cluster_mode_checks_the_router_once_the_range_is_known() -> None:
    config = AgentConfig(
        pod_cidr=CIDR, router_ip="10.7.0.1", kvstore="etcd", kvstore_opt={"etcd.address": "x"}
    )
    with pytest.raises(AgentError, match="not inside the pod range"):
        router_change(config, None)


def test_a_change_names_the_previous_router() -> None:
    config = AgentConfig(pod_cidr=CIDR, router_ip="10.9.8.200")
    assert router_change(config, _state()) == "10.9.8.254"  # an older state: the default
    assert router_change(config, _state(router_ip="10.9.8.100")) == "10.9.8.100"
    assert router_change(config, _state(router_ip="10.9.8.200")) is None
    assert router_change(config, None) is None


def test_a_router_address_held_by_a_pod_is_refused() -> None:
    with pytest.raises(AgentError, match=re.escape("10.9.8.7 is the address of default/web")):
        router_change(AgentConfig(pod_cidr=CIDR, router_ip="10.9.8.7"), _state())
    reserved = _state(ipam_reserved=["10.9.8.9"])
    with pytest.raises(AgentError, match="reservation"):
        router_change(AgentConfig(pod_cidr=CIDR, router_ip="10.9.8.9"), reserved)


def test_node_records_carry_the_router() -> None:
    node = NodeInfo(name="n", underlay_ip="192.0.2.1", pod_cidr=CIDR)
    assert node.router == "10.9.8.254"
    moved = NodeInfo.from_json(
        NodeInfo(name="n", underlay_ip="192.0.2.1", pod_cidr=CIDR, router_ip="10.9.8.1").to_json()
    )
    assert moved.router == "10.9.8.1"
    assert b'"IPv4RouterIP":"10.9.8.1"' in moved.to_json()
