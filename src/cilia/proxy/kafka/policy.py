"""Kafka rule semantics: which requests a peer identity may send on a redirected port."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cilia.policy.desired import ANY_IDENTITY, L7Allow
from cilia.policy.l7 import PortRuleKafka
from cilia.proxy.kafka.messages import KafkaRequest


def header_matches(rule: PortRuleKafka, req: KafkaRequest) -> bool:
    """Role/apiKey, apiVersion and clientID of `rule` accept the request's header."""
    keys = rule.api_keys()
    if keys is not None and req.api_key not in keys:
        return False
    if rule.apiVersion and int(rule.apiVersion) != req.api_version:
        return False
    return not (rule.clientID and rule.clientID != req.client_id)


def rules_allow(rules: Iterable[PortRuleKafka], req: KafkaRequest) -> bool:
    """Whether any of `rules` allows `req`.

    A request naming several topics is allowed only if every topic is allowed
    by some rule matching its header; a request naming no topic (group
    coordination, api versions, metadata for all topics) is judged on its
    header alone; one whose topics cannot be read needs a rule without topic.
    """
    matching = [r for r in rules if header_matches(r, req)]
    if not matching:
        return False
    if req.topics is None:
        return any(r.topic is None for r in matching)
    return all(any(r.topic is None or r.topic == t for r in matching) for t in req.topics)


class KafkaPolicy:
    """The allow-list of one redirect: peer identity → rules (no rules = every request)."""

    def __init__(self, allows: Iterable[L7Allow] = ()) -> None:
        self._rules: dict[int, list[PortRuleKafka] | None] = {}
        self._also: dict[int, list[PortRuleKafka]] = {}
        for allow in allows:
            if allow.also is not None and allow.also.kafka:
                # A local destination's own ingress rules, which requests must meet as well.
                self._also[allow.identity] = list(allow.also.kafka)
            known = self._rules.setdefault(allow.identity, [])
            if not allow.kafka:
                self._rules[allow.identity] = None
            elif known is not None:
                known.extend(allow.kafka)

    @classmethod
    def from_mapping(cls, rules: Mapping[int, Iterable[PortRuleKafka]]) -> KafkaPolicy:
        """Build from identity → rules (an empty iterable allows everything)."""
        return cls(L7Allow(identity, kafka=tuple(r)) for identity, r in rules.items())

    def allows(self, identity: int, req: KafkaRequest) -> bool:
        """The verdict for a request from (ingress) or to (egress) `identity`."""
        also = self._also.get(identity)
        if also is not None and not rules_allow(also, req):
            return False
        combined: list[PortRuleKafka] = []
        for key in {identity, ANY_IDENTITY}:
            if key in self._rules:
                rules = self._rules[key]
                if rules is None:
                    return True
                combined.extend(rules)
        return rules_allow(combined, req)
