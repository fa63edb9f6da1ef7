"""CIDR identities, entities, the legacy host option, incremental resolution and trace."""

from __future__ import annotations

from typing import Any

from cilia.identity import HOST, INIT, WORLD
from cilia.labels import Labels
from cilia.policy import Direction, PolicyResolver, Protocol, parse_rules
from cilia.policy.cidr import cidr_labels, cidr_selector, rule_prefixes
from cilia.policy.trace import TraceEnd, trace

E, IN = Direction.EGRESS, Direction.INGRESS
TCP = Protocol.TCP
WEB = Labels.parse(["k8s:app=web", "k8s:io.kubernetes.pod.namespace=default"])
CLIENT = Labels.parse(["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"])
P8, P16, P24, P32 = "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32"
IDS = {256: WEB, 257: CLIENT, 300: cidr_labels(P8), 301: cidr_labels(P16), 302: cidr_labels(P24)}
IDS[303] = cidr_labels(P32)
V4_WORLD, V6_WORLD, V6_NET, V6_HOST = 304, 305, 306, 307
IDS |= {V4_WORLD: cidr_labels("0.0.0.0/0"), V6_WORLD: cidr_labels("::/0")}
IDS |= {V6_NET: cidr_labels("fd00:1::/64"), V6_HOST: cidr_labels("fd00:1::7")}
SEL = {"matchLabels": {"app": "web"}}


def peers(rule: dict[str, Any], direction: Direction = E, **kw: Any) -> set[int]:
    p = PolicyResolver(parse_rules([rule]), IDS, **kw).resolve(WEB)
    return {e.identity for e in p.entries if e.direction is direction}


def test_cidr_labels_cover_every_shorter_prefix() -> None:
    labels = cidr_labels(P16)
    assert "cidr:10.0.0.0/8" in labels and "cidr:0.0.0.0/0" in labels and "reserved:world" in labels
    assert cidr_selector("10.0.0.0/8").matches(labels)
    assert not cidr_selector(P24).matches(labels)


def test_rule_prefixes_include_excepts_and_world_of_both_families() -> None:
    rules = parse_rules(
        [
            {
                "endpointSelector": SEL,
                "egress": [{"toCIDRSet": [{"cidr": "0.0.0.0/0", "except": ["10.1.0.0/16"]}]}],
                "ingress": [{"fromCIDR": ["192.168.1.7", "fd00:1::7", "::/0"]}],
            }
        ]
    )
    assert rule_prefixes(rules) == {
        "0.0.0.0/0",
        "10.1.0.0/16",
        "192.168.1.7/32",
        "fd00:1::7/128",
        "::/0",
    }


def test_cidr_selects_itself_and_more_specific_minus_excepts() -> None:
    assert peers({"endpointSelector": SEL, "egress": [{"toCIDR": [P8]}]}) == {300, 301, 302, 303}
    rule = {"endpointSelector": SEL, "egress": [{"toCIDRSet": [{"cidr": P8, "except": [P16]}]}]}
    assert peers(rule) == {300}
    world = {
        "endpointSelector": SEL,
        "egress": [{"toCIDRSet": [{"cidr": "0.0.0.0/0", "except": [P24]}]}],
    }
    assert peers(world) == {V4_WORLD, 300, 301}


def test_each_family_allows_only_its_own_prefixes() -> None:
    def egress(*cidrs: str) -> set[int]:
        return peers({"endpointSelector": SEL, "egress": [{"toCIDR": list(cidrs)}]})

    assert egress("0.0.0.0/0") == {V4_WORLD, 300, 301, 302, 303}
    assert egress("::/0") == {V6_WORLD, V6_NET, V6_HOST}
    assert egress("fd00:1::/64") == {V6_NET, V6_HOST}
    assert egress("fd00:1::/64", "10.1.2.0/24") == {V6_NET, V6_HOST, 302, 303}
    v6_except = {"toCIDRSet": [{"cidr": "::/0", "except": ["fd00:1::/64"]}]}
    assert peers({"endpointSelector": SEL, "egress": [v6_except]}) == {V6_WORLD}
    assert WORLD in peers({"endpointSelector": SEL, "egress": [{"toEntities": ["world"]}]})


def test_ingress_cidr_with_ports() -> None:
    rule = {
        "endpointSelector": SEL,
        "ingress": [
            {"fromCIDR": [P24], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}
        ],
    }
    p = PolicyResolver(parse_rules([rule]), IDS).resolve(WEB)
    assert p.allows(IN, 303, 80, TCP) and not p.allows(IN, 303, 81, TCP)
    assert not p.allows(IN, 301, 80, TCP) and not p.allows(IN, 257, 80, TCP)


def test_entities() -> None:
    def ent(name: str) -> set[int]:
        return peers({"endpointSelector": SEL, "ingress": [{"fromEntities": [name]}]}, IN)

    assert ent("world") == {WORLD, *range(300, 308)}
    assert ent("host") == {HOST} and ent("init") == {INIT} and ent("all") == {0}
    assert 256 in ent("cluster") and HOST in ent("cluster") and 300 not in ent("cluster")


def test_legacy_host_allows_world() -> None:
    rule = {"endpointSelector": SEL, "ingress": [{"fromEntities": ["host"]}]}
    assert peers(rule, IN) == {HOST}
    assert peers(rule, IN, host_allows_world=True) == {HOST, WORLD}


def test_incremental_update_touches_only_selected_endpoints() -> None:
    a = {
        "endpointSelector": SEL,
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}],
    }
    b = {"endpointSelector": {"matchLabels": {"app": "client"}}, "ingress": [{}]}
    rules = parse_rules([a, b])
    old = PolicyResolver(rules, IDS)
    new_b = parse_rules([{**b, "ingress": [{"fromEntities": ["world"]}]}])[0]
    new = old.updated([rules[0], new_b])
    changed = old.changed_rules(new)
    assert {id(r) for r in changed} == {id(rules[1]), id(new_b)}
    assert not PolicyResolver.affects(changed, WEB) and PolicyResolver.affects(changed, CLIENT)
    assert new.resolve(WEB) == old.resolve(WEB)
    assert new.resolve(CLIENT) == PolicyResolver([rules[0], new_b], IDS).resolve(CLIENT)


def test_trace_verdict_is_the_datapath_evaluation() -> None:
    rule = {
        "endpointSelector": SEL,
        "ingress": [
            {
                "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}],
            }
        ],
        "description": "clients on 80",
    }
    resolver = PolicyResolver(parse_rules([rule]), IDS)
    src, dst = TraceEnd("client", CLIENT, 257), TraceEnd("web", WEB, 256)
    ok = trace(resolver, src, dst, 80, TCP)
    assert ok.allowed and ok.lines[-1] == "Final verdict: ALLOWED"
    assert any("clients on 80" in line for line in ok.lines)
    denied = trace(resolver, src, dst, 81, TCP)
    assert not denied.allowed and denied.lines[-1] == "Final verdict: DENIED"
    assert not trace(resolver, src, dst, None).allowed, "L3 only: no all-ports allowance"
    assert trace(resolver, dst, src, 81, TCP).allowed, "client is not isolated"
