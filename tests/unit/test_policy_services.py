"""toServices: backends of selector-less services become CIDR peers (policy.services)."""

from __future__ import annotations

from typing import Any

from cilia.labels import Labels
from cilia.policy import Direction, PolicyResolver, parse_rules
from cilia.policy.cidr import cidr_labels, rule_prefixes
from cilia.policy.services import ServiceBackends, ServiceTranslator, translate_rule

WEB = Labels.parse(["k8s:app=web"])
EXT = ServiceBackends("prod", "db", {"tier": "data"}, False, ("198.51.100.7", "198.51.100.8"))
SELECTING = ServiceBackends("prod", "api", {"tier": "data"}, True, ("10.200.0.9",))
OTHER_NS = ServiceBackends("dev", "db", {}, False, ("203.0.113.1",))
SERVICES = [EXT, SELECTING, OTHER_NS]


def rules(*to_services: dict[str, Any]) -> list[Any]:
    return parse_rules(
        [
            {
                "endpointSelector": {"matchLabels": {"app": "web"}},
                "egress": [{"toServices": list(to_services)}],
            }
        ]
    )


def test_by_name_and_namespace() -> None:
    (rule,) = rules({"k8sService": {"serviceName": "db", "namespace": "prod"}})
    assert rule_prefixes([translate_rule(rule, SERVICES)]) == {"198.51.100.7/32", "198.51.100.8/32"}
    (any_ns,) = rules({"k8sService": {"serviceName": "db"}})
    assert rule_prefixes([translate_rule(any_ns, SERVICES)]) == {
        "198.51.100.7/32",
        "198.51.100.8/32",
        "203.0.113.1/32",
    }, "an empty namespace matches every namespace"


def test_by_selector_ignores_services_with_a_selector() -> None:
    (rule,) = rules({"k8sServiceSelector": {"selector": {"matchLabels": {"tier": "data"}}}})
    assert rule_prefixes([translate_rule(rule, SERVICES)]) == {"198.51.100.7/32", "198.51.100.8/32"}


def test_backends_are_enforced_like_cidrs_and_none_allow_nothing() -> None:
    (rule,) = rules({"k8sService": {"serviceName": "db", "namespace": "prod"}})
    translated = translate_rule(rule, SERVICES)
    ids = {300: WEB, 400: cidr_labels("198.51.100.7/32"), 401: cidr_labels("198.51.100.8/32")}
    policy = PolicyResolver([translated], ids).resolve(WEB)
    assert policy.egress_enforced
    assert {(e.identity, e.port) for e in policy.entries if e.direction is Direction.EGRESS} == {
        (400, 0),
        (401, 0),
    }
    (missing,) = rules({"k8sService": {"serviceName": "nope"}})
    empty = PolicyResolver([translate_rule(missing, SERVICES)], ids).resolve(WEB)
    assert empty.egress_enforced and not empty.entries, "no backend: nothing allowed, not anything"


def test_translator_keeps_unchanged_translations() -> None:
    (rule,) = rules({"k8sService": {"serviceName": "db", "namespace": "prod"}})
    plain = parse_rules([{"endpointSelector": {}, "egress": [{"toEntities": ["world"]}]}])[0]
    translate = ServiceTranslator()
    first = translate([rule, plain], SERVICES)
    assert first[1] is plain, "rules without toServices pass through"
    assert translate([rule, plain], SERVICES)[0] is first[0], "same backends: same object"
    moved = ServiceBackends("prod", "db", {}, False, ("198.51.100.9",))
    assert translate([rule, plain], [moved])[0] is not first[0]
