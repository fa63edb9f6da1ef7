"""Rule schema and the reference's validation rules, with exact paths and wording."""

from __future__ import annotations

from typing import Any

import pytest

from cilia.labels import Labels
from cilia.policy import Rule, ValidationError, parse_rules

ALL: dict[str, Any] = {}


def error_of(obj: Any, path: str = "") -> ValidationError:
    with pytest.raises(ValidationError) as info:
        parse_rules(obj, path)
    return info.value


def rule(**parts: Any) -> dict[str, Any]:
    return {"endpointSelector": ALL, **parts}


def test_full_rule_parses() -> None:
    obj = rule(
        ingress=[
            {
                "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                "fromRequires": [{"matchLabels": {"env": "prod"}}],
                "toPorts": [
                    {
                        "ports": [{"port": "80", "protocol": "TCP"}],
                        "rules": {"http": [{"method": "GET", "path": "/public/.*"}]},
                    }
                ],
            },
            {"fromCIDR": ["10.0.0.0/8"], "toPorts": [{"ports": [{"port": "53"}]}]},
            {"fromCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]},
            {"fromEntities": ["world", "host"]},
        ],
        egress=[
            {"toEndpoints": [{}], "toRequires": [{}]},
            {"toCIDR": ["1.1.1.1/32"], "toPorts": [{"ports": [{"port": 443, "protocol": "tcp"}]}]},
            {"toCIDRSet": [{"cidr": "0.0.0.0/0"}]},
            {"toEntities": ["cluster", "all", "init"]},
            {"toServices": [{"k8sService": {"serviceName": "db", "namespace": "prod"}}]},
            {"toPorts": [{"ports": [{"port": "9092"}], "rules": {"kafka": [{"role": "produce"}]}}]},
        ],
        labels=["k8s:policy=a", {"key": "owner", "value": "me", "source": "unspec"}],
        description="everything",
    )
    [parsed] = parse_rules([obj])
    assert parsed.labels == Labels.parse(["k8s:policy=a", "unspec:owner=me"])
    assert parsed.ingress is not None and parsed.egress is not None
    port = parsed.egress[1].toPorts[0].ports[0]  # type: ignore[index]
    assert (port.port, port.protocol) == ("443", "TCP")
    assert parsed.ingress[1].toPorts[0].ports[0].protocol == "ANY"  # type: ignore[index]
    again = parse_rules([parsed.to_dict()])[0]
    assert again == parsed
    assert parsed.to_dict()["ingress"][2]["fromCIDRSet"][0]["except"] == ["10.96.0.0/12"]


def test_single_rule_dict_accepted() -> None:
    assert len(parse_rules(rule(ingress=[{}]))) == 1


def test_not_a_list() -> None:
    err = error_of("nope")
    assert (err.path, err.reason) == ("", "must be a list of rules")


@pytest.mark.parametrize(
    ("obj", "path", "reason"),
    [
        ({"ingress": []}, "specs[1].endpointSelector", "field required"),
        (rule(ingres=[]), "specs[1].ingres", "unknown field"),
        (rule(ingress=[{"fromEndpoint": []}]), "specs[1].ingress[0].fromEndpoint", "unknown field"),
        (
            rule(ingress=[{}, {"fromEndpoints": [{}], "fromCIDRSet": [{"cidr": "10.0.0.0/8"}]}]),
            "specs[1].ingress[1]",
            "Combining FromEndpoints and FromCIDRSet is not supported yet",
        ),
        (
            rule(ingress=[{"fromCIDR": ["10.0.0.0/8"], "fromEntities": ["world"]}]),
            "specs[1].ingress[0]",
            "Combining FromCIDR and FromEntities is not supported yet",
        ),
        (
            rule(egress=[{"toEndpoints": [{}], "toCIDR": ["10.0.0.0/8"]}]),
            "specs[1].egress[0]",
            "Combining ToEndpoints and ToCIDR is not supported yet",
        ),
        (
            rule(
                egress=[
                    {
                        "toServices": [{"k8sService": {"serviceName": "x"}}],
                        "toPorts": [{"ports": [{"port": "80"}]}],
                    }
                ]
            ),
            "specs[1].egress[0]",
            "Combining ToServices and ToPorts is not supported yet",
        ),
        (
            rule(ingress=[{}, {"toPorts": [{}, {"ports": [{"port": "80"}, {"port": "0"}]}]}]),
            "specs[1].ingress[1].toPorts[1].ports[1].port",
            "port must be between 1 and 65535",
        ),
        (
            rule(ingress=[{"toPorts": [{"ports": [{"port": "65536"}]}]}]),
            "specs[1].ingress[0].toPorts[0].ports[0].port",
            "port must be between 1 and 65535",
        ),
        (
            rule(ingress=[{"toPorts": [{"ports": [{"port": "http"}]}]}]),
            "specs[1].ingress[0].toPorts[0].ports[0].port",
            "unable to parse port 'http'",
        ),
        (
            rule(ingress=[{"toPorts": [{"ports": [{"protocol": "TCP"}]}]}]),
            "specs[1].ingress[0].toPorts[0].ports[0].port",
            "field required",
        ),
        (
            rule(ingress=[{"toPorts": [{"ports": [{"port": "80", "protocol": "SCTP"}]}]}]),
            "specs[1].ingress[0].toPorts[0].ports[0].protocol",
            "invalid protocol 'SCTP', must be { tcp | udp | any }",
        ),
        (
            rule(ingress=[{"toPorts": [{"ports": [{"port": str(p)} for p in range(1, 42)]}]}]),
            "specs[1].ingress[0].toPorts[0].ports",
            "too many ports, the max is 40",
        ),
        (
            rule(
                ingress=[
                    {
                        "toPorts": [
                            {
                                "ports": [{"port": "53", "protocol": "UDP"}],
                                "rules": {"http": [{"path": "/"}]},
                            }
                        ]
                    }
                ]
            ),
            "specs[1].ingress[0].toPorts[0].ports[0].protocol",
            "L7 rules can only apply exclusively to TCP, not UDP",
        ),
        (
            rule(
                ingress=[
                    {
                        "toPorts": [
                            {"ports": [{"port": "80"}], "rules": {"http": [{}], "kafka": [{}]}}
                        ]
                    }
                ]
            ),
            "specs[1].ingress[0].toPorts[0].rules",
            "multiple L7 protocol rule types specified in single rule",
        ),
        (
            rule(
                ingress=[
                    {
                        "toPorts": [
                            {
                                "ports": [{"port": "9092"}],
                                "rules": {"kafka": [{"role": "produce", "apiKey": "fetch"}]},
                            }
                        ]
                    }
                ]
            ),
            "specs[1].ingress[0].toPorts[0].rules.kafka[0]",
            "Cannot set both Role:'produce' and APIKey:'fetch' together",
        ),
        (
            rule(
                ingress=[
                    {
                        "toPorts": [
                            {"ports": [{"port": "9092"}], "rules": {"kafka": [{"topic": "a b"}]}}
                        ]
                    }
                ]
            ),
            "specs[1].ingress[0].toPorts[0].rules.kafka[0].topic",
            "Invalid Kafka topic name 'a b'",
        ),
        (
            rule(
                ingress=[
                    {"toPorts": [{"ports": [{"port": "80"}], "rules": {"http": [{"path": "(["}]}}]}
                ]
            ),
            "specs[1].ingress[0].toPorts[0].rules.http[0].path",
            None,
        ),
        (
            rule(ingress=[{"fromEntities": ["world", "galaxy"]}]),
            "specs[1].ingress[0].fromEntities[1]",
            "unknown entity 'galaxy' (valid: all, world, cluster, host, init)",
        ),
        (
            rule(egress=[{"toCIDR": ["10.0.0.0/33"]}]),
            "specs[1].egress[0].toCIDR[0]",
            "invalid CIDR '10.0.0.0/33'",
        ),
        (
            rule(egress=[{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}]}]),
            "specs[1].egress[0].toCIDRSet[0].except[0]",
            "except CIDR '192.168.0.0/16' is not contained in '10.0.0.0/8'",
        ),
        (
            rule(
                ingress=[
                    {"fromEndpoints": [{"matchExpressions": [{"key": "a", "operator": "in"}]}]}
                ]
            ),
            "specs[1].ingress[0].fromEndpoints[0].matchExpressions[0].operator",
            '"in" is not a valid label selector operator',
        ),
        (
            {"endpointSelector": {"matchLabels": {"app": ["x"]}}},
            "specs[1].endpointSelector.matchLabels.app",
            "must be a string",
        ),
        (rule(ingress={}), "specs[1].ingress", "must be a list"),
        (rule(description=5), "specs[1].description", "must be a string"),
        (rule(labels=[{"key": "a", "bad": 1}]), "specs[1].labels", "unknown label field 'bad'"),
    ],
)
def test_validation_errors(obj: dict[str, Any], path: str, reason: str | None) -> None:
    err = error_of([rule(), obj], "specs")
    assert err.path == path
    if reason is None:
        assert err.reason.startswith("invalid regular expression '(['")
    else:
        assert err.reason == reason
        assert str(err) == f"{path}: {reason}"


def test_ingress_cidr_with_ports_allowed_beyond_1_1() -> None:
    [parsed] = parse_rules(
        rule(ingress=[{"fromCIDR": ["10.0.0.0/8"], "toPorts": [{"ports": [{"port": "80"}]}]}])
    )
    assert parsed.ingress is not None and parsed.ingress[0].fromCIDR == ("10.0.0.0/8",)


def test_l7_with_any_protocol_allowed() -> None:
    parse_rules(
        rule(
            ingress=[
                {"toPorts": [{"ports": [{"port": "80"}], "rules": {"http": [{"method": "GET"}]}}]}
            ]
        )
    )


def test_kafka_api_keys() -> None:
    [parsed] = parse_rules(
        rule(
            ingress=[
                {
                    "toPorts": [
                        {
                            "ports": [{"port": "9092"}],
                            "rules": {"kafka": [{"role": "produce"}, {"apiKey": "fetch"}, {}]},
                        }
                    ]
                }
            ]
        )
    )
    assert parsed.ingress is not None
    kafka = parsed.ingress[0].toPorts[0].rules.kafka  # type: ignore[index,union-attr]
    assert kafka is not None
    assert kafka[0].api_keys() == frozenset({0, 3, 18})
    assert kafka[1].api_keys() == frozenset({1})
    assert kafka[2].api_keys() is None


def test_models_are_immutable() -> None:
    [parsed] = parse_rules(rule())
    with pytest.raises(Exception, match="frozen"):
        parsed.description = "x"  # type: ignore[misc]
    assert isinstance(parsed, Rule)
