"""`toServices`: egress to the backends of Kubernetes services without a selector.

As in the reference, only services without a selector count (their backends
are whatever their Endpoints object lists, typically outside the cluster; pods
behind a selector are reached with `toEndpoints`). A matching service's
backend addresses become /32 (or /128) CIDR peers of the member, so they are
enforced like `toCIDRSet`. The member keeps its `toServices`, so a service
without backends allows nothing rather than any peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cilia.labels import Labels
from cilia.policy.api import CIDRRule, EgressRule, Rule, Service


@dataclass(frozen=True)
class ServiceBackends:
    """What `toServices` needs to know of one Kubernetes service."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    has_selector: bool
    addresses: tuple[str, ...]


def service_matches(item: Service, svc: ServiceBackends) -> bool:
    """Whether a `toServices` item names `svc` (an empty namespace matches any)."""
    if item.k8sService is not None:
        ref = item.k8sService
        return ref.serviceName == svc.name and ref.namespace in (None, "", svc.namespace)
    if item.k8sServiceSelector is not None:
        ref_sel = item.k8sServiceSelector
        labels = Labels.from_dict(svc.labels, source="k8s")
        return ref_sel.namespace in (None, "", svc.namespace) and ref_sel.selector.matches(labels)
    return False


def backend_prefixes(items: Iterable[Service], services: Sequence[ServiceBackends]) -> list[str]:
    """Host prefixes of the backends of every selector-less service the items name."""
    out: dict[str, None] = {}
    for item in items:
        for svc in services:
            if not svc.has_selector and service_matches(item, svc):
                for address in svc.addresses:
                    out[str(ipaddress.ip_network(address))] = None
    return list(out)


def _translate_member(member: EgressRule, services: Sequence[ServiceBackends]) -> EgressRule:
    if not member.toServices:
        return member
    cidrs = tuple(CIDRRule(cidr=p) for p in backend_prefixes(member.toServices, services))
    return member.model_copy(update={"toCIDRSet": cidrs})


def translate_rule(rule: Rule, services: Sequence[ServiceBackends]) -> Rule:
    """`rule` with every `toServices` member also carrying its backends as CIDR peers."""
    if not any(m.toServices for m in rule.egress or ()):
        return rule
    egress = tuple(_translate_member(m, services) for m in rule.egress or ())
    return rule.model_copy(update={"egress": egress})


class ServiceTranslator:
    """`translate_rule` over a rule set, keeping the object of every translation that
    did not change, so the resolver reuses compiled rules and re-resolves only the
    endpoints whose `toServices` backends changed."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[Rule, Rule]] = {}

    def __call__(self, rules: Sequence[Rule], services: Sequence[ServiceBackends]) -> list[Rule]:
        previous, self._last = self._last, {}
        out: list[Rule] = []
        for rule in rules:
            new = translate_rule(rule, services)
            old = previous.get(id(rule))
            if new is not rule and old is not None and old[0] is rule and old[1] == new:
                new = old[1]
            self._last[id(rule)] = (rule, new)
            out.append(new)
        return out
