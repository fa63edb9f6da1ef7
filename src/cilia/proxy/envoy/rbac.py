"""HTTP rules and peer identities as Envoy RBAC policies (JSON-ready dicts).

Peers are matched by address: an identity's prefixes from the ipcache, minus
more specific prefixes of other identities (longest-prefix semantics, as in the
datapath). Ingress matches the downstream source, egress the original destination.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from cilia.policy.desired import ANY_IDENTITY, Direction, L7Allow
from cilia.policy.l7 import PortRuleHTTP

Json = dict[str, Any]
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _header(name: str, **match: Any) -> Json:
    return {"header": {"name": name, **match}}


def _regex(name: str, regex: str) -> Json:
    return _header(name, string_match={"safe_regex": {"regex": regex}})


def rule_permission(rule: PortRuleHTTP) -> Json:
    """One HTTP rule: every given field must match (method/path/host are whole-value regexes)."""
    parts: list[Json] = []
    if rule.method is not None:
        parts.append(_regex(":method", rule.method))
    if rule.path is not None:
        parts.append(_regex(":path", rule.path))
    if rule.host is not None:
        parts.append(_regex(":authority", rule.host))
    for header in rule.headers or ():
        name, sep, value = header.partition(":")
        name = name.strip().lower()
        if sep:
            parts.append(_header(name, string_match={"exact": value.strip()}))
        else:
            parts.append(_header(name, present_match=True))
    if not parts:
        return {"any": True}
    return parts[0] if len(parts) == 1 else {"and_rules": {"rules": parts}}


def rules_permission(rules: Iterable[PortRuleHTTP]) -> Json:
    """Several rules are OR'd; no rules means every request."""
    perms = [rule_permission(r) for r in rules]
    if not perms:
        return {"any": True}
    return perms[0] if len(perms) == 1 else {"or_rules": {"rules": perms}}


def prefixes_by_identity(ipcache: Mapping[str, int]) -> dict[int, list[Net]]:
    """Group ipcache entries (prefix or address → identity) by identity."""
    out: dict[int, list[Net]] = {}
    for prefix, identity in ipcache.items():
        out.setdefault(identity, []).append(ipaddress.ip_network(prefix, strict=False))
    return out


def _cidr(net: Net) -> Json:
    return {"address_prefix": str(net.network_address), "prefix_len": net.prefixlen}


def _address_set(
    identity: int, ipcache: Mapping[int, list[Net]], key: str, rule_style: bool
) -> Json | None:
    """A principal (or permission) matching the addresses whose longest prefix is `identity`'s."""
    if identity == ANY_IDENTITY:
        return {"any": True}
    many, one_not = ("or_rules", "not_rule") if rule_style else ("or_ids", "not_id")
    both = "and_rules" if rule_style else "and_ids"
    items = "rules" if rule_style else "ids"
    others = [n for ident, nets in ipcache.items() if ident != identity for n in nets]
    terms: list[Json] = []
    for net in ipcache.get(identity, []):
        inner = [o for o in others if o.version == net.version and o != net and o.subnet_of(net)]  # type: ignore[arg-type]
        term: Json = {key: _cidr(net)}
        if inner:
            term = {
                both: {items: [term, {one_not: {many: {items: [{key: _cidr(o)} for o in inner]}}}]}
            }
        terms.append(term)
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else {many: {items: terms}}


def _excluding(dest: Json, identities: Iterable[int], nets: Mapping[int, list[Net]]) -> Json:
    """`dest` minus the addresses of `identities` (they have policies of their own)."""
    sets = [_address_set(i, nets, "destination_ip", rule_style=True) for i in identities]
    known = [s for s in sets if s is not None]
    if not known:
        return dest
    return {"and_rules": {"rules": [dest, {"not_rule": {"or_rules": {"rules": known}}}]}}


def rbac_policies(
    direction: Direction, allows: Iterable[L7Allow], ipcache: Mapping[str, int]
) -> Json:
    """RBAC `policies` for one redirect: one policy per allowed peer identity."""
    nets = prefixes_by_identity(ipcache)
    allows = sorted(allows, key=lambda a: a.identity)
    chained = [a.identity for a in allows if a.also is not None]
    policies: Json = {}
    for allow in allows:
        perm = rules_permission(allow.http)
        if allow.also is not None:  # the local destination's own ingress rules as well
            perm = {"and_rules": {"rules": [perm, rules_permission(allow.also.http)]}}
        if direction is Direction.INGRESS:
            principal = _address_set(allow.identity, nets, "direct_remote_ip", rule_style=False)
            if principal is None:
                continue
            policy = {"permissions": [perm], "principals": [principal]}
        else:
            dest = _address_set(allow.identity, nets, "destination_ip", rule_style=True)
            if dest is None:
                continue
            if allow.identity == ANY_IDENTITY and chained:
                dest = _excluding(dest, chained, nets)
            policy = {
                "permissions": [{"and_rules": {"rules": [dest, perm]}}],
                "principals": [{"any": True}],
            }
        name = f"identity-{allow.identity}"
        if name in policies:  # several allows for one identity: OR their permissions
            policies[name]["permissions"].extend(policy["permissions"])
        else:
            policies[name] = policy
    return policies
