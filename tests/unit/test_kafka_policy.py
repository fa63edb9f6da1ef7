"""Kafka rule matching: role/apiKey, apiVersion, clientID, topics, per identity."""

from __future__ import annotations

from cilia.policy.desired import ANY_IDENTITY, L7Allow
from cilia.policy.l7 import PortRuleKafka
from cilia.proxy.kafka.messages import KafkaRequest
from cilia.proxy.kafka.policy import KafkaPolicy, rules_allow


def req(
    api_key: int, topics: tuple[str, ...] | None = (), version: int = 5, client: str | None = "c"
) -> KafkaRequest:
    return KafkaRequest(api_key, version, 1, client, topics, None, b"")


PRODUCE_A = PortRuleKafka(role="produce", topic="a")


def test_role_produce_keys_and_topic() -> None:
    assert rules_allow([PRODUCE_A], req(0, ("a",)))
    assert not rules_allow([PRODUCE_A], req(0, ("b",)))
    assert rules_allow([PRODUCE_A], req(3, ("a",)))
    assert rules_allow([PRODUCE_A], req(18))
    assert not rules_allow([PRODUCE_A], req(1, ("a",)))  # fetch is consume


def test_multi_topic_produce_needs_every_topic() -> None:
    produce_b = PortRuleKafka(role="produce", topic="b")
    assert not rules_allow([PRODUCE_A], req(0, ("a", "b")))
    assert rules_allow([PRODUCE_A, produce_b], req(0, ("a", "b")))


def test_consume_role_allows_group_apis_without_topics() -> None:
    rule = PortRuleKafka(role="consume", topic="a")
    for key in (10, 11, 12, 13, 14):
        assert rules_allow([rule], req(key))
    assert rules_allow([rule], req(1, ("a",)))
    assert not rules_allow([rule], req(0, ("a",)))


def test_api_key_version_and_client_id() -> None:
    rule = PortRuleKafka(apiKey="fetch", apiVersion="4", clientID="joe")
    assert rules_allow([rule], req(1, ("x",), version=4, client="joe"))
    assert not rules_allow([rule], req(1, ("x",), version=5, client="joe"))
    assert not rules_allow([rule], req(1, ("x",), version=4, client="bob"))
    assert not rules_allow([rule], req(1, ("x",), version=4, client=None))


def test_unreadable_topics_need_a_rule_without_topic() -> None:
    assert not rules_allow([PRODUCE_A], req(0, None))
    assert rules_allow([PortRuleKafka(role="produce")], req(0, None))


def test_policy_per_identity_and_wildcard() -> None:
    policy = KafkaPolicy([L7Allow(300, kafka=(PRODUCE_A,)), L7Allow(301)])
    assert policy.allows(300, req(0, ("a",)))
    assert not policy.allows(300, req(0, ("b",)))
    assert policy.allows(301, req(0, ("b",)))  # L3/L4 only peer: every request
    assert not policy.allows(302, req(0, ("a",)))  # not listed
    wildcard = KafkaPolicy([L7Allow(ANY_IDENTITY, kafka=(PortRuleKafka(topic="z"),))])
    assert wildcard.allows(999, req(0, ("z",)))
    assert not wildcard.allows(999, req(0, ("y",)))


def test_rules_of_identity_and_wildcard_combine() -> None:
    policy = KafkaPolicy.from_mapping(
        {300: [PRODUCE_A], ANY_IDENTITY: [PortRuleKafka(role="produce", topic="b")]}
    )
    assert policy.allows(300, req(0, ("a", "b")))
    assert not policy.allows(301, req(0, ("a", "b")))
