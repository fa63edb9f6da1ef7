"""Egress L7 redirects carry a local destination's ingress L7 rules (policy.chain)."""

from __future__ import annotations

from cilia.policy.chain import chain_local_ingress, chain_redirect, has_egress_redirects, merged
from cilia.policy.desired import ANY_IDENTITY, Direction, EndpointPolicy, L7Allow, Redirect
from cilia.policy.l7 import PortRuleHTTP, PortRuleKafka
from cilia.proxy.envoy.rbac import rbac_policies
from cilia.proxy.kafka.messages import KafkaRequest
from cilia.proxy.kafka.policy import KafkaPolicy

SRC, DST, OTHER = 300, 301, 302
DOCS = PortRuleHTTP(method="GET", path="/docs/.*")
PUBLIC = PortRuleHTTP(path="/docs/public.*")


def ingress(*allows: L7Allow, port: int = 80, parser: str = "http") -> dict[int, list[Redirect]]:
    return {DST: [Redirect(Direction.INGRESS, port, parser, allows)]}  # type: ignore[arg-type]


def chain(redirect: Redirect, ing: dict[int, list[Redirect]]) -> Redirect:
    return chain_redirect(redirect, SRC, [DST, OTHER], lambda i: ing.get(i, []))


def test_merged_union_and_allow_all() -> None:
    a, b = L7Allow(1, (DOCS,)), L7Allow(2, (PUBLIC,))
    assert merged(9, [a, b]) == L7Allow(9, (DOCS, PUBLIC))
    assert merged(9, [a, L7Allow(3)]) == L7Allow(9), "an allow without rules admits everything"
    assert merged(9, []) is None


def test_explicit_destination_gets_its_ingress_rules() -> None:
    egress = Redirect(Direction.EGRESS, 80, "http", (L7Allow(DST, (DOCS,)),))
    out = chain(egress, ingress(L7Allow(SRC, (PUBLIC,)), L7Allow(OTHER)))
    assert out.allows == (L7Allow(DST, (DOCS,), also=L7Allow(SRC, (PUBLIC,))),)


def test_wildcard_egress_is_split_for_the_local_destination() -> None:
    egress = Redirect(Direction.EGRESS, 80, "http", (L7Allow(ANY_IDENTITY, (DOCS,)),))
    out = chain(egress, ingress(L7Allow(ANY_IDENTITY, (PUBLIC,))))
    assert set(out.allows) == {
        L7Allow(ANY_IDENTITY, (DOCS,)),
        L7Allow(DST, (DOCS,), also=L7Allow(SRC, (PUBLIC,))),
    }


def test_nothing_to_chain() -> None:
    egress = Redirect(Direction.EGRESS, 80, "http", (L7Allow(DST, (DOCS,)),))
    assert chain(egress, ingress(L7Allow(OTHER, (PUBLIC,)))) == egress, "source not policed"
    assert chain(egress, ingress(L7Allow(SRC), port=81)) == egress, "another port"
    assert chain(egress, ingress(L7Allow(SRC), parser="kafka")) == egress, "another parser"
    ing = Redirect(Direction.INGRESS, 80, "http", (L7Allow(DST),))
    assert chain(ing, ingress(L7Allow(SRC, (PUBLIC,)))) == ing, "only egress is chained"


def test_chain_local_ingress_and_egress_detection() -> None:
    egress = Redirect(Direction.EGRESS, 80, "http", (L7Allow(DST, (DOCS,)),))
    out = chain_local_ingress([egress], SRC, [DST], lambda i: ingress(L7Allow(SRC))[i])
    chained = L7Allow(DST, (DOCS,), also=L7Allow(SRC))  # the destination admits every request
    assert out == frozenset({Redirect(Direction.EGRESS, 80, "http", (chained,))})
    assert has_egress_redirects(EndpointPolicy(redirects=out))
    assert not has_egress_redirects(EndpointPolicy())


def test_envoy_rbac_requires_both_rule_sets_and_excludes_chained_from_wildcard() -> None:
    allows = [L7Allow(ANY_IDENTITY, (DOCS,)), L7Allow(DST, (DOCS,), also=L7Allow(SRC, (PUBLIC,)))]
    policies = rbac_policies(Direction.EGRESS, allows, {"10.1.0.5/32": DST})
    dst_rules = policies[f"identity-{DST}"]["permissions"][0]["and_rules"]["rules"]
    perm = dst_rules[1]["and_rules"]["rules"]
    assert perm[1] == {
        "header": {"name": ":path", "string_match": {"safe_regex": {"regex": PUBLIC.path}}}
    }
    wildcard_dest = policies["identity-0"]["permissions"][0]["and_rules"]["rules"][0]
    excluded = wildcard_dest["and_rules"]["rules"][1]["not_rule"]["or_rules"]["rules"]
    assert excluded == [{"destination_ip": {"address_prefix": "10.1.0.5", "prefix_len": 32}}]


def test_kafka_policy_requires_both_rule_sets() -> None:
    produce_a, produce_any = PortRuleKafka(role="produce", topic="a"), PortRuleKafka(role="produce")
    policy = KafkaPolicy(
        [L7Allow(DST, kafka=(produce_any,), also=L7Allow(SRC, kafka=(produce_a,)))]
    )

    def produce(topic: str) -> KafkaRequest:
        return KafkaRequest(0, 5, 1, "c", (topic,), None, b"")

    assert policy.allows(DST, produce("a"))
    assert not policy.allows(DST, produce("b")), "the destination's ingress rule refuses topic b"
