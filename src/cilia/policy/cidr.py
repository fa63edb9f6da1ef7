"""CIDR peers: the prefixes rules name, the labels of their identities, their selectors.

Every prefix a rule names (and every `except` prefix), of either family, gets a CIDR
identity whose labels are `cidr:<p>` for the prefix and for each prefix covering it
(down to `/0`), plus `reserved:world`. So the selector of `10.0.0.0/8`
(`cidr:10.0.0.0/8`) matches the identity of `10.1.0.0/16` too, and an `except` prefix
is carved out by removing the identities its own selector matches. `0.0.0.0/0` and
`::/0` are prefixes like any other: each names the world of its own family only, so a
rule with only IPv4 prefixes allows nothing over IPv6 and the other way round (the
datapath never lets an IPv6 prefix name an IPv4 address). Addresses outside every
prefix keep the `world` identity, which the `world` entity allows. Pod and node
addresses have /32 (/128) entries of their own in the ipcache, so CIDR rules never
match endpoints of the cluster (as in Cilium).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

from cilia.labels import SOURCE_CIDR, SOURCE_RESERVED, Label, Labels, LabelSelector
from cilia.policy.api import CIDRRule, Rule
from cilia.policy.selectorcache import SelectorCache

WORLD_SELECTOR = LabelSelector({f"{SOURCE_RESERVED}:world": ""})
"""Selects the `world` identity and every CIDR identity."""


def normalize(prefix: str) -> str:
    """`a.b.c.d/len` with host bits cleared (a bare address becomes /32)."""
    return str(ipaddress.ip_network(prefix, strict=False))


def _net(prefix: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(prefix, strict=False)


@lru_cache(maxsize=65536)
def cidr_labels(prefix: str) -> Labels:
    """Labels of the CIDR identity of `prefix`: it and every covering prefix, plus world."""
    net = _net(prefix)
    covering = [net.supernet(new_prefix=n) for n in range(net.prefixlen)] + [net]
    labels = [Label(SOURCE_CIDR, str(c)) for c in covering]
    return Labels([*labels, Label(SOURCE_RESERVED, "world")])


def cidr_selector(prefix: str) -> LabelSelector:
    """The selector matching the identities of `prefix` and of every prefix inside it."""
    return LabelSelector({f"{SOURCE_CIDR}:{normalize(prefix)}": ""})


def is_cidr_identity(labels: Labels) -> bool:
    """Whether an identity was allocated for a CIDR."""
    return any(label.source == SOURCE_CIDR for label in labels)


def _items(cidrs: Sequence[str] | None, sets: Sequence[CIDRRule] | None) -> list[CIDRRule]:
    return [CIDRRule(cidr=c) for c in cidrs or ()] + list(sets or ())


def rule_prefixes(rules: Iterable[Rule]) -> set[str]:
    """Every prefix the rules name, `except` prefixes included."""
    out: set[str] = set()
    for rule in rules:
        items: list[CIDRRule] = []
        for i in rule.ingress or ():
            items += _items(i.fromCIDR, i.fromCIDRSet)
        for e in rule.egress or ():
            items += _items(e.toCIDR, e.toCIDRSet)
        for item in items:
            out.update(normalize(prefix) for prefix in (item.cidr, *(item.except_ or ())))
    return out


def peers(
    cache: SelectorCache, cidrs: Sequence[str] | None, sets: Sequence[CIDRRule] | None
) -> set[int]:
    """The identities a member's `fromCIDR`/`fromCIDRSet` (or `to...`) allow."""
    out: set[int] = set()
    for item in _items(cidrs, sets):
        allowed = set(cache.select(cidr_selector(item.cidr)))
        for exc in item.except_ or ():
            allowed -= cache.select(cidr_selector(exc))
        out |= allowed
    return out
