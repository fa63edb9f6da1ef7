"""Policy resolution into per-endpoint desired state."""

from __future__ import annotations

from typing import Any

from cilia.labels import Labels
from cilia.policy import (
    Direction,
    EndpointPolicy,
    PolicyEntry,
    PolicyResolver,
    Protocol,
    parse_rules,
    resolve,
)

IN, E = Direction.INGRESS, Direction.EGRESS
TCP, UDP, ANY = Protocol.TCP, Protocol.UDP, Protocol.ANY

WEB = Labels.parse(["k8s:app=web", "k8s:io.kubernetes.pod.namespace=default"])
CLIENT = Labels.parse(["k8s:app=client", "k8s:env=prod", "k8s:io.kubernetes.pod.namespace=default"])
DEV = Labels.parse(["k8s:app=client", "k8s:env=dev", "k8s:io.kubernetes.pod.namespace=dev"])
IDS = {256: WEB, 257: CLIENT, 258: DEV}


def policy(*rules: dict[str, Any], labels: Labels = WEB) -> EndpointPolicy:
    return resolve(parse_rules(list(rules)), labels, IDS)


def entries(p: EndpointPolicy) -> set[tuple[Direction, int, int, Protocol]]:
    return {(e.direction, e.identity, e.port, e.protocol) for e in p.entries}


WEB_SEL = {"matchLabels": {"app": "web"}}


def test_no_rules_no_enforcement() -> None:
    p = resolve([], WEB, IDS)
    assert (p.ingress_enforced, p.egress_enforced, p.entries) == (False, False, frozenset())
    assert p.allows(IN, 999, 80, TCP)


def test_rule_not_selecting_endpoint_has_no_effect() -> None:
    p = policy({"endpointSelector": {"matchLabels": {"app": "db"}}, "ingress": [{}]})
    assert not p.ingress_enforced


def test_empty_ingress_list_does_not_enforce_but_empty_member_does() -> None:
    assert not policy({"endpointSelector": WEB_SEL, "ingress": []}).ingress_enforced
    p = policy({"endpointSelector": WEB_SEL, "ingress": [{}]})
    assert p.ingress_enforced and not p.egress_enforced
    assert p.entries == frozenset()
    assert not p.allows(IN, 257, 80, TCP)
    assert p.allows(E, 257, 80, TCP)


def test_from_endpoints_l3_only() -> None:
    p = policy(
        {
            "endpointSelector": WEB_SEL,
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}],
        }
    )
    assert entries(p) == {(IN, 257, 0, ANY), (IN, 258, 0, ANY)}
    assert p.allows(IN, 257, 1234, UDP)
    assert not p.allows(IN, 256, 80, TCP)


def test_l3_l4_with_any_protocol_expands() -> None:
    p = policy(
        {
            "endpointSelector": WEB_SEL,
            "ingress": [
                {
                    "fromEndpoints": [{"matchLabels": {"env": "prod"}}],
                    "toPorts": [{"ports": [{"port": "80"}, {"port": "53", "protocol": "UDP"}]}],
                }
            ],
        }
    )
    assert entries(p) == {(IN, 257, 80, TCP), (IN, 257, 80, UDP), (IN, 257, 53, UDP)}
    assert not p.allows(IN, 257, 53, TCP)


def test_l4_only_is_any_peer() -> None:
    p = policy(
        {
            "endpointSelector": WEB_SEL,
            "egress": [{"toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}],
        }
    )
    assert p.egress_enforced and not p.ingress_enforced
    assert entries(p) == {(E, 0, 443, TCP)}
    assert p.allows(E, 4242, 443, TCP)
    assert not p.allows(E, 4242, 80, TCP)


def test_empty_selector_is_any_peer() -> None:
    p = policy({"endpointSelector": {}, "ingress": [{"fromEndpoints": [{}]}]})
    assert entries(p) == {(IN, 0, 0, ANY)}


def test_union_of_rules() -> None:
    p = policy(
        {
            "endpointSelector": WEB_SEL,
            "ingress": [{"fromEndpoints": [{"matchLabels": {"env": "prod"}}]}],
        },
        {"endpointSelector": {}, "ingress": [{"fromEndpoints": [{"matchLabels": {"env": "dev"}}]}]},
    )
    assert entries(p) == {(IN, 257, 0, ANY), (IN, 258, 0, ANY)}


def test_entities() -> None:
    def ent(name: str) -> set[tuple[Direction, int, int, Protocol]]:
        return entries(policy({"endpointSelector": WEB_SEL, "egress": [{"toEntities": [name]}]}))

    assert ent("all") == {(E, 0, 0, ANY)}
    assert ent("world") == {(E, 2, 0, ANY)}
    assert ent("host") == {(E, 1, 0, ANY)}
    assert ent("init") == {(E, 5, 0, ANY)}
    assert {i for _, i, _, _ in ent("cluster")} == {1, 3, 4, 5, 256, 257, 258}


def test_reserved_selector() -> None:
    p = policy(
        {
            "endpointSelector": WEB_SEL,
            "ingress": [{"fromEndpoints": [{"matchLabels": {"reserved:host": ""}}]}],
        }
    )
    assert entries(p) == {(IN, 1, 0, ANY)}


def test_cidrs_select_only_their_identities_world_prefixes_included() -> None:
    p = policy(
        {
            "endpointSelector": WEB_SEL,
            "egress": [
                {"toCIDR": ["0.0.0.0/0"]},
                {"toCIDR": ["10.0.0.0/8"], "toPorts": [{"ports": [{"port": "80"}]}]},
                {"toCIDRSet": [{"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}]},
                {"toServices": [{"k8sService": {"serviceName": "x"}}]},
            ],
        }
    )
    assert p.egress_enforced
    assert entries(p) == set()  # no CIDR identity exists yet: nothing is allowed


def test_requires_filters_peers_and_expands_wildcards() -> None:
    p = policy(
        {
            "endpointSelector": WEB_SEL,
            "ingress": [
                {"fromEndpoints": [{"matchLabels": {"app": "client"}}]},
                {"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]},
            ],
        },
        {"endpointSelector": {}, "ingress": [{"fromRequires": [{"matchLabels": {"env": "prod"}}]}]},
    )
    assert entries(p) == {(IN, 257, 0, ANY), (IN, 257, 80, TCP)}
    assert not p.allows(IN, 258, 80, TCP)
    assert not p.allows(IN, 2, 80, TCP)


def test_requires_of_several_rules_are_anded() -> None:
    p = policy(
        {"endpointSelector": WEB_SEL, "ingress": [{"fromEntities": ["all"]}]},
        {
            "endpointSelector": {},
            "ingress": [{"fromRequires": [{"matchLabels": {"app": "client"}}]}],
        },
        {
            "endpointSelector": {},
            "ingress": [
                {"fromRequires": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "dev"}}]}
            ],
        },
    )
    assert entries(p) == {(IN, 258, 0, ANY)}


def test_to_requires() -> None:
    p = policy(
        {
            "endpointSelector": WEB_SEL,
            "egress": [
                {"toEntities": ["cluster"], "toRequires": [{"matchLabels": {"env": "dev"}}]}
            ],
        }
    )
    assert entries(p) == {(E, 258, 0, ANY)}


def test_resolver_reuse_and_update() -> None:
    rules = parse_rules(
        [
            {
                "endpointSelector": WEB_SEL,
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}],
            }
        ]
    )
    resolver = PolicyResolver(rules, IDS)
    assert resolver.resolve(WEB) == resolve(rules, WEB, IDS)
    assert not resolver.resolve(CLIENT).ingress_enforced
    extra = parse_rules([{"endpointSelector": {"matchLabels": {"app": "client"}}, "egress": [{}]}])
    updated = resolver.updated([*rules, *extra])
    assert updated.resolve(CLIENT).egress_enforced
    assert updated.resolve(WEB) == resolver.resolve(WEB)


def test_resolve_memo_notices_identity_changes() -> None:
    rules = parse_rules(
        [
            {
                "endpointSelector": WEB_SEL,
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}],
            }
        ]
    )
    ids = dict(IDS)
    assert {e.identity for e in resolve(rules, WEB, ids).entries} == {257, 258}
    ids[258] = Labels.parse(["k8s:app=other"])
    assert {e.identity for e in resolve(rules, WEB, ids).entries} == {257}


def test_matching_expression_selectors_on_endpoint() -> None:
    p = policy(
        {
            "endpointSelector": {
                "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]
            },
            "ingress": [{}],
        }
    )
    assert p.ingress_enforced
    assert PolicyEntry(IN, 0) not in p.entries


def test_allow_localhost_adds_host_to_enforced_ingress_only() -> None:
    rules = parse_rules(
        [
            {
                "endpointSelector": WEB_SEL,
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}],
            }
        ]
    )
    on = PolicyResolver(rules, IDS, allow_localhost=True)
    assert (IN, 1, 0, ANY) in entries(on.resolve(WEB))
    assert (IN, 1, 0, ANY) not in entries(PolicyResolver(rules, IDS).resolve(WEB))
    assert not on.resolve(CLIENT).entries, "not enforced: nothing to add"
    assert (IN, 1, 0, ANY) in entries(on.updated(rules).resolve(WEB)), "kept by updated()"
