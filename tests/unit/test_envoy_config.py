"""Envoy configuration generation: RBAC from HTTP rules and identities, listener invariants."""

from __future__ import annotations

from pathlib import Path

from cilia.policy.desired import ANY_IDENTITY, Direction, L7Allow
from cilia.policy.l7 import PortRuleHTTP
from cilia.proxy.envoy import config as cfg
from cilia.proxy.envoy.rbac import rbac_policies, rule_permission, rules_permission


def test_rule_permission_fields() -> None:
    perm = rule_permission(PortRuleHTTP(method="GET", path="/public", headers=("X-A: 1", "X-B")))
    rules = perm["and_rules"]["rules"]
    assert rules[0] == {
        "header": {"name": ":method", "string_match": {"safe_regex": {"regex": "GET"}}}
    }
    assert rules[1]["header"]["name"] == ":path"
    assert rules[2] == {"header": {"name": "x-a", "string_match": {"exact": "1"}}}
    assert rules[3] == {"header": {"name": "x-b", "present_match": True}}
    assert rule_permission(PortRuleHTTP()) == {"any": True}
    assert rules_permission([]) == {"any": True}
    assert "or_rules" in rules_permission([PortRuleHTTP(path="/a"), PortRuleHTTP(path="/b")])


def test_ingress_principals_use_longest_prefix() -> None:
    ipcache = {"10.0.0.0/8": 2, "10.1.0.5/32": 300, "10.1.0.6": 300}
    policies = rbac_policies(Direction.INGRESS, [L7Allow(2), L7Allow(300)], ipcache)
    world = policies["identity-2"]["principals"][0]
    excluded = world["and_ids"]["ids"][1]["not_id"]["or_ids"]["ids"]
    assert {e["direct_remote_ip"]["address_prefix"] for e in excluded} == {"10.1.0.5", "10.1.0.6"}
    pod = policies["identity-300"]["principals"][0]
    assert len(pod["or_ids"]["ids"]) == 2


def test_wildcard_unknown_and_egress() -> None:
    assert rbac_policies(Direction.INGRESS, [L7Allow(ANY_IDENTITY)], {})["identity-0"][
        "principals"
    ] == [{"any": True}]
    assert rbac_policies(Direction.INGRESS, [L7Allow(999)], {}) == {}  # no address: no policy
    egress = rbac_policies(Direction.EGRESS, [L7Allow(300)], {"10.1.0.5/32": 300})["identity-300"]
    dest = egress["permissions"][0]["and_rules"]["rules"][0]
    assert dest == {"destination_ip": {"address_prefix": "10.1.0.5", "prefix_len": 32}}


def test_listener_does_not_depend_on_rules(tmp_path: Path) -> None:
    s = cfg.Settings(tmp_path)
    a = cfg.HttpListener("l", 1000, Direction.INGRESS, (L7Allow(300),))
    b = cfg.HttpListener(
        "l", 1000, Direction.INGRESS, (L7Allow(301, http=(PortRuleHTTP(path="/x"),)),)
    )
    assert cfg.listener(s, a) == cfg.listener(s, b)  # policy changes never drain connections
    assert cfg.route(a, {}) != cfg.route(b, {"1.2.3.4/32": 301})
    assert cfg.listener(s, a)["transparent"] is True
    assert [c["name"] for c in cfg.clusters(s, [a])] == [cfg.ORIGINAL_DST_CLUSTER]


def test_egress_upstreams_carry_the_source_identity(tmp_path: Path) -> None:
    s = cfg.Settings(tmp_path, upstream_mark=0xB00)
    egress = cfg.HttpListener("e", 1000, Direction.EGRESS, (L7Allow(0),), source_identity=300)
    ingress = cfg.HttpListener("i", 1001, Direction.INGRESS, (L7Allow(0),))
    clusters = {c["name"]: c for c in cfg.clusters(s, [egress, ingress])}
    assert set(clusters) == {cfg.ORIGINAL_DST_CLUSTER, f"{cfg.ORIGINAL_DST_CLUSTER}-300"}

    def mark(name: str) -> int:
        options = clusters[name]["upstream_bind_config"]["socket_options"]
        return int(options[0]["int_value"])

    assert mark(f"{cfg.ORIGINAL_DST_CLUSTER}-300") == 0xB00 | (300 << 16)
    assert mark(cfg.ORIGINAL_DST_CLUSTER) == 0xB00  # ingress: authorized at the source
    route = cfg.route(egress, {})["virtual_hosts"][0]["routes"][0]["route"]
    assert route["cluster"] == f"{cfg.ORIGINAL_DST_CLUSTER}-300"


def test_the_wildcard_listens_and_connects_in_both_families(tmp_path: Path) -> None:
    lst = cfg.HttpListener("l", 1000, Direction.INGRESS, (L7Allow(0),))
    body = cfg.listener(cfg.Settings(tmp_path), lst)
    assert body["address"]["socket_address"]["address"] == "0.0.0.0"
    assert body["additional_addresses"] == [
        {"address": {"socket_address": {"address": "::", "port_value": 1000}}}
    ]
    assert cfg.listener(cfg.Settings(tmp_path, bind="127.0.0.1"), lst)["additional_addresses"] == []
    (cluster,) = cfg.clusters(cfg.Settings(tmp_path, upstream_mark=0xB00), [lst])
    bind = cluster["upstream_bind_config"]
    sources = [bind["source_address"]] + [a["address"] for a in bind["extra_source_addresses"]]
    assert [a["address"] for a in sources] == ["0.0.0.0", "::"]
