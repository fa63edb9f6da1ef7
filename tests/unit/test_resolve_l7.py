"""L7 redirects in the resolver's output."""

from __future__ import annotations

from cilia.labels import Labels
from cilia.policy import parse_rules
from cilia.policy.desired import Direction, Protocol
from cilia.policy.resolve import PolicyResolver

LUKE = Labels.parse(["k8s:io.cilium.k8s.policy.serviceaccount=luke"])
LEIA = Labels.parse(["k8s:io.cilium.k8s.policy.serviceaccount=leia"])
HAN = Labels.parse(["k8s:name=han"])
IDS = {300: LUKE, 301: LEIA, 302: HAN}


def test_http_rules_become_a_redirect_for_their_peers() -> None:
    rules = parse_rules(
        [
            {
                "endpointSelector": {
                    "matchLabels": {"io.cilium.k8s.policy.serviceaccount": "leia"}
                },
                "ingress": [
                    {
                        "fromEndpoints": [
                            {"matchLabels": {"io.cilium.k8s.policy.serviceaccount": "luke"}}
                        ],
                        "toPorts": [
                            {
                                "ports": [{"port": "80", "protocol": "TCP"}],
                                "rules": {"http": [{"method": "GET", "path": "/public$"}]},
                            }
                        ],
                    },
                    {
                        "fromEndpoints": [{"matchLabels": {"name": "han"}}],
                        "toPorts": [{"ports": [{"port": "80"}]}],
                    },
                ],
            }
        ]
    )
    policy = PolicyResolver(rules, IDS).resolve(LEIA)
    assert len(policy.redirects) == 1
    (redirect,) = policy.redirects
    assert (redirect.direction, redirect.port, redirect.parser) == (Direction.INGRESS, 80, "http")
    allows = {a.identity: a for a in redirect.allows}
    assert set(allows) == {300, 302}
    assert [r.path for r in allows[300].http] == ["/public$"]
    assert allows[302].http == (), "a peer allowed at L4 only may make every request"
    assert any(
        e.identity == 300 and e.port == 80 and e.protocol == Protocol.TCP for e in policy.entries
    )


def test_no_l7_rules_no_redirect() -> None:
    rules = parse_rules(
        [{"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80"}]}]}]}]
    )
    assert PolicyResolver(rules, IDS).resolve(LEIA).redirects == frozenset()
