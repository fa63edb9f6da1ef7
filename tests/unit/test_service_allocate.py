"""clusterIP and nodePort allocation (service.allocate) and the ranges it draws from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from cilia.k8s.manifests import Service, parse_manifest
from cilia.policy.errors import ValidationError
from cilia.service.allocate import allocate
from cilia.service.model import ServiceError, ServiceRanges

RANGES = ServiceRanges("10.96.0.0/29", "fd00:96::/124", (30000, 30003))
V4_ONLY = ServiceRanges("10.96.0.0/29")


def svc(name: str, **spec: Any) -> Service:
    spec.setdefault("ports", [{"port": 80}])
    obj = parse_manifest(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}
    )
    assert isinstance(obj, Service)
    return obj


def node_port(name: str, *numbers: int | None, **spec: Any) -> Service:
    """A NodePort service with one TCP port per number (None: to be allocated)."""
    ports = [
        {"name": f"p{i}", "port": 80 + i} | ({} if n is None else {"nodePort": n})
        for i, n in enumerate(numbers)
    ]
    return svc(name, type="NodePort", ports=ports, **spec)


def ips(services: list[Service]) -> list[str | None]:
    return [s.spec.clusterIP for s in services]


def node_ports(service: Service) -> list[int | None]:
    return [p.nodePort for p in service.spec.ports]


def refused(
    new: Sequence[Service], stored: Sequence[Service] = (), ranges: ServiceRanges = RANGES
) -> str:
    with pytest.raises(ServiceError) as info:
        allocate(new, stored, ranges)
    err = info.value
    assert str(err) == f"{err.obj}: {err.field}: {err.reason}"
    return str(err)


def test_lowest_free_addresses_skip_network_first_host_and_broadcast() -> None:
    out = allocate([svc(f"s{i}") for i in range(5)], [], RANGES)
    assert ips(out) == ["10.96.0.2", "10.96.0.3", "10.96.0.4", "10.96.0.5", "10.96.0.6"]
    assert [s.name for s in out] == ["s0", "s1", "s2", "s3", "s4"], "same order"
    assert "no free address in 10.96.0.0/29" in refused([svc(f"s{i}") for i in range(6)])


def test_ipv6_range_keeps_its_last_address() -> None:
    out = allocate([svc(f"s{i}", ipFamilies=["IPv6"]) for i in range(14)], [], RANGES)
    assert ips(out)[0] == "fd00:96::2" and ips(out)[-1] == "fd00:96::f"


def test_given_addresses_are_taken_and_skipped() -> None:
    out = allocate([svc("a", clusterIP="10.96.0.2"), svc("b"), svc("c")], [], RANGES)
    assert ips(out) == ["10.96.0.2", "10.96.0.3", "10.96.0.4"]
    first = allocate([svc("a")], [], RANGES)
    out = allocate([svc("b"), svc("c", clusterIP="10.96.0.1")], first, RANGES)
    assert ips(out) == ["10.96.0.3", "10.96.0.1"], "the first host address may be asked for"


def test_reapplied_service_keeps_its_address_and_node_ports() -> None:
    stored = allocate([svc("other"), node_port("web", None, 30002)], [], RANGES)
    assert ips(stored) == ["10.96.0.2", "10.96.0.3"]
    assert node_ports(stored[1]) == [30000, 30002]
    again = allocate([svc("new"), node_port("web", None, None)], stored, RANGES)
    assert ips(again) == ["10.96.0.4", "10.96.0.3"]
    assert node_ports(again[1]) == [30000, 30002]
    same = allocate(stored, stored, RANGES)
    assert same == stored, "allocating the stored services again changes nothing"


def test_a_service_twice_in_one_run_is_reapplied() -> None:
    out = allocate([node_port("a", None), node_port("a", None), node_port("b", None)], [], RANGES)
    assert ips(out) == ["10.96.0.2", "10.96.0.2", "10.96.0.3"]
    assert [node_ports(s) for s in out] == [[30000], [30000], [30001]]


def test_conflicting_stored_services_keep_the_first_holder() -> None:
    a, b = node_port("a", 30000), node_port("b", 30000)
    (out,) = allocate([node_port("b", None)], [a, b], RANGES)
    assert node_ports(out) == [30001]
    assert "30000/TCP is already in use by service/default/a" in refused(
        [node_port("c", 30000)], [a, b]
    )


def test_node_ports_follow_port_names() -> None:
    (stored,) = allocate([node_port("web", None, None)], [], RANGES)
    assert node_ports(stored) == [30000, 30001]
    swapped = svc(
        "web",
        type="NodePort",
        ports=[{"name": "p1", "port": 81}, {"name": "p0", "port": 80}],
    )
    (out,) = allocate([swapped], [stored], RANGES)
    assert [(p.name, p.nodePort) for p in out.spec.ports] == [("p1", 30001), ("p0", 30000)]
    (moved,) = allocate([node_port("web", 30001, None)], [stored], RANGES)
    assert node_ports(moved) == [30001, 30000], "a kept port another port now asks for is moved"


def test_node_ports_freed_by_a_reapply_are_reused() -> None:
    stored = allocate([node_port("a", None, None)], [], RANGES)
    assert node_ports(stored[0]) == [30000, 30001]
    out = allocate([svc("a"), node_port("b", None)], stored, RANGES)
    assert out[0].spec.type == "ClusterIP" and node_ports(out[0]) == [None]
    assert node_ports(out[1]) == [30000]


def test_auto_node_ports_avoid_numbers_any_protocol_holds() -> None:
    udp = svc("dns", type="NodePort", ports=[{"port": 53, "protocol": "UDP", "nodePort": 30000}])
    out = allocate([udp, node_port("web", None)], [], RANGES)
    assert node_ports(out[1]) == [30001]


def test_given_node_port_may_share_a_number_across_protocols() -> None:
    udp = svc("dns", type="NodePort", ports=[{"port": 53, "protocol": "UDP", "nodePort": 30000}])
    out = allocate([udp, node_port("web", 30000)], [], RANGES)
    assert node_ports(out[1]) == [30000]


def test_given_node_ports_are_held_before_others_are_picked() -> None:
    (out,) = allocate([node_port("web", None, 30000)], [], RANGES)
    assert node_ports(out) == [30001, 30000]


def test_headless_gets_nothing() -> None:
    (out,) = allocate([svc("h", clusterIP="None", ports=[])], [], RANGES)
    assert out.spec.clusterIP == "None"
    (again,) = allocate([svc("h")], [out], RANGES)
    assert again.spec.clusterIP == "None", "omitted on re-apply: stays headless"


def test_stored_addresses_outside_the_range_are_kept() -> None:
    (old,) = allocate([svc("a", clusterIP="10.96.0.2")], [], RANGES)
    (out,) = allocate([svc("a")], [old], ServiceRanges("10.97.0.0/24"))
    assert out.spec.clusterIP == "10.96.0.2"


@pytest.mark.parametrize(
    ("new", "message"),
    [
        ([svc("a", clusterIP="10.97.0.2")], "10.97.0.2 is not in the service range 10.96.0.0/29"),
        ([svc("a", clusterIP="10.96.0.0")], "10.96.0.0 is the network address of 10.96.0.0/29"),
        ([svc("a", clusterIP="10.96.0.7")], "10.96.0.7 is the broadcast address of 10.96.0.0/29"),
        ([svc("a", clusterIP="fd00:96::")], "fd00:96:: is the network address of fd00:96::/124"),
        ([svc("a", clusterIP="fd00:97::1")], "fd00:97::1 is not in the service range"),
        (
            [svc("a", clusterIP="10.96.0.3"), svc("b", clusterIP="10.96.0.3")],
            "service/default/b: spec.clusterIP: 10.96.0.3 is already in use by service/default/a",
        ),
        (
            [node_port("a", 29999)],
            "service/default/a: spec.ports[0].nodePort: 29999 is not in the range 30000-30003",
        ),
        ([node_port("a", None, 30004)], "spec.ports[1].nodePort: 30004 is not in the range"),
        (
            [node_port("a", 30001), node_port("b", None, 30001)],
            "service/default/b: spec.ports[1].nodePort: 30001/TCP is already in use by "
            "service/default/a",
        ),
        (
            [node_port("a", None, None, None), node_port("b", None, None)],
            "service/default/b: spec.ports[1].nodePort: no free port in 30000-30003",
        ),
    ],
)
def test_refused(new: list[Service], message: str) -> None:
    assert message in refused(new)


def test_refused_against_stored() -> None:
    stored = allocate([svc("a"), node_port("b", 30003)], [], RANGES)
    assert refused([svc("a", clusterIP="10.96.0.5")], stored) == (
        "service/default/a: spec.clusterIP: field is immutable (it is 10.96.0.2)"
    )
    assert "spec.clusterIP: field is immutable" in refused([svc("a", clusterIP="None")], stored)
    assert "spec.ipFamilies: field is immutable" in refused([svc("a", ipFamilies=["IPv6"])], stored)
    assert "10.96.0.3 is already in use by service/default/b" in refused(
        [svc("c", clusterIP="10.96.0.3")], stored
    )
    assert "30003/TCP is already in use by service/default/b" in refused(
        [node_port("c", 30003)], stored
    )


def test_ipv6_refused_when_off() -> None:
    assert refused([svc("a", ipFamilies=["IPv6"])], ranges=V4_ONLY) == (
        "service/default/a: spec.ipFamilies: IPv6 is not enabled"
    )
    assert refused([svc("a", clusterIP="fd00::2")], ranges=V4_ONLY) == (
        "service/default/a: spec.clusterIP: IPv6 is not enabled"
    )
    headless = svc("h", clusterIP="None", ports=[], ipFamilies=["IPv6"])
    assert "spec.ipFamilies: IPv6 is not enabled" in refused([headless], ranges=V4_ONLY)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("10.96.0.0/33",), "cidr4: invalid CIDR"),
        (("10.96.0.1/16",), "cidr4: invalid CIDR '10.96.0.1/16'"),
        (("fd00::/64",), "cidr4: 'fd00::/64' is not an IPv4 range"),
        (("10.96.0.0/31",), "cidr4: '10.96.0.0/31' has no address to allocate"),
        (("10.96.0.0/16", "10.97.0.0/16"), "cidr6: '10.97.0.0/16' is not an IPv6 range"),
        (("10.96.0.0/16", "fd00::/127"), "cidr6: 'fd00::/127' has no address"),
        (("10.96.0.0/16", "", (0, 10)), "node_ports: 0-10 is not a range within 1-65535"),
        (("10.96.0.0/16", "", (30, 20)), "node_ports: 30-20"),
        (("10.96.0.0/16", "", (30000, 65536)), "node_ports: 30000-65536"),
    ],
)
def test_bad_ranges(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        ServiceRanges(*args)


def test_default_ranges() -> None:
    ranges = ServiceRanges("10.96.0.0/16")
    assert (ranges.cidr6, ranges.node_ports) == ("", (30000, 32767))
    (one,) = allocate([svc("a")], [], ServiceRanges("10.96.0.0/30", "", (7, 7)))
    assert one.spec.clusterIP == "10.96.0.2", "a /30 has one address to give"


@given(
    st.lists(
        st.tuples(
            st.sampled_from("abcdef"),
            st.none() | st.integers(2, 6),
            st.lists(st.none() | st.integers(30000, 30003), min_size=1, max_size=2),
        ),
        max_size=8,
    )
)
def test_runs_never_share_an_address_or_node_port(requests: list[Any]) -> None:
    """Apply runs one after the other: whatever is accepted holds distinct resources."""
    stored: dict[str, Service] = {}
    for name, host, numbers in requests:
        given = {} if host is None else {"clusterIP": f"10.96.0.{host}"}
        try:
            request = node_port(name, *numbers, **given)
        except ValidationError:
            continue  # the same nodePort twice in one service
        try:
            (done,) = allocate([request], list(stored.values()), RANGES)
        except ServiceError:
            continue
        stored[done.key] = done
        event("accepted")
        held_ips = [s.spec.clusterIP for s in stored.values()]
        held_ports = [p.nodePort for s in stored.values() for p in s.spec.ports]
        assert len(set(held_ips)) == len(held_ips) and None not in held_ips
        assert len(set(held_ports)) == len(held_ports) and None not in held_ports
