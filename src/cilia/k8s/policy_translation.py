"""Translation of CiliumNetworkPolicy and NetworkPolicy objects into policy rules."""

from __future__ import annotations

from collections.abc import Sequence

from cilia.k8s.manifests import (
    CiliumNetworkPolicy,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
)
from cilia.labels import (
    NAMESPACE_LABELS_PREFIX,
    POD_NAMESPACE_KEY,
    SOURCE_K8S,
    Labels,
    LabelSelector,
)
from cilia.policy.api import (
    MAX_PORTS,
    CIDRRule,
    EgressRule,
    IngressRule,
    PortProtocol,
    PortRule,
    Rule,
)

K8S_PREFIX = f"{SOURCE_K8S}:"
NAMESPACE_KEY = f"{K8S_PREFIX}{POD_NAMESPACE_KEY}"


def _scope(selectors: Sequence[LabelSelector] | None, ns: str) -> tuple[LabelSelector, ...] | None:
    return None if selectors is None else tuple(s.with_namespace(ns) for s in selectors)


def scope_rule(rule: Rule, namespace: str, labels: Labels) -> Rule:
    """Confine a rule of a namespaced policy to `namespace` and add `labels`.

    The endpoint selector gets the namespace unless it is on reserved labels (as
    rules for `reserved:init` are) or `container:` labels (runtime containers outside
    Kubernetes have no namespace); peer and requirement selectors get it unless
    they are on such labels or already choose namespaces themselves.
    """
    merged = rule.labels.union(labels)
    selector = rule.endpointSelector
    if selector.selects_outside_namespaces():
        return rule.model_copy(update={"labels": merged})
    ingress = None
    if rule.ingress is not None:
        ingress = tuple(
            m.model_copy(
                update={
                    "fromEndpoints": _scope(m.fromEndpoints, namespace),
                    "fromRequires": _scope(m.fromRequires, namespace),
                }
            )
            for m in rule.ingress
        )
    egress = None
    if rule.egress is not None:
        egress = tuple(
            m.model_copy(
                update={
                    "toEndpoints": _scope(m.toEndpoints, namespace),
                    "toRequires": _scope(m.toRequires, namespace),
                }
            )
            for m in rule.egress
        )
    return rule.model_copy(
        update={
            "endpointSelector": selector.with_match(NAMESPACE_KEY, namespace),
            "ingress": ingress,
            "egress": egress,
            "labels": merged,
        }
    )


def rules_from_cnp(cnp: CiliumNetworkPolicy) -> list[Rule]:
    """The namespace-scoped, labelled rules of a CiliumNetworkPolicy."""
    labels = cnp.owner_labels
    return [scope_rule(rule, cnp.namespace, labels) for rule in cnp.raw_rules]


def peer_selector(peer: NetworkPolicyPeer, namespace: str) -> LabelSelector:
    """The Cilium selector of a NetworkPolicy pod/namespace peer.

    podSelector alone: pods of the policy's namespace. namespaceSelector: pods of
    namespaces whose labels match (through `io.cilium.k8s.namespace.labels.*`),
    ANDed with podSelector when both are given.
    """
    pods = peer.podSelector.prefixed(K8S_PREFIX) if peer.podSelector else LabelSelector()
    if peer.namespaceSelector is None:
        return pods.with_match(NAMESPACE_KEY, namespace)
    namespaces = peer.namespaceSelector.prefixed(K8S_PREFIX + NAMESPACE_LABELS_PREFIX)
    return namespaces.merged(pods).with_expressions([(NAMESPACE_KEY, "Exists", [])])


def port_rules(ports: Sequence[NetworkPolicyPort] | None) -> tuple[PortRule, ...] | None:
    """`toPorts` for NetworkPolicy ports (protocol defaults to TCP).

    None (all ports) when the list is empty; an entry without a port means every
    port of its protocol (port "0").
    """
    if not ports:
        return None
    items = [PortProtocol(port=str(p.port or 0), protocol=p.protocol or "TCP") for p in ports]
    chunks = [items[i : i + MAX_PORTS] for i in range(0, len(items), MAX_PORTS)]
    return tuple(PortRule(ports=tuple(chunk)) for chunk in chunks)


def _split_peers(
    peers: Sequence[NetworkPolicyPeer] | None, namespace: str
) -> tuple[tuple[LabelSelector, ...], tuple[CIDRRule, ...]]:
    selectors = tuple(peer_selector(p, namespace) for p in peers or () if p.ipBlock is None)
    blocks = tuple(p.ipBlock for p in peers or () if p.ipBlock is not None)
    return selectors, blocks


def _ingress(np: NetworkPolicy) -> tuple[IngressRule, ...]:
    members: list[IngressRule] = []
    for rule in np.spec.ingress or ():
        to_ports = port_rules(rule.ports)
        if not rule.from_:
            members.append(IngressRule(fromEntities=("all",), toPorts=to_ports))
            continue
        selectors, blocks = _split_peers(rule.from_, np.namespace)
        if selectors:
            members.append(IngressRule(fromEndpoints=selectors, toPorts=to_ports))
        if blocks:
            members.append(IngressRule(fromCIDRSet=blocks, toPorts=to_ports))
    return tuple(members) or (IngressRule(),)


def _egress(np: NetworkPolicy) -> tuple[EgressRule, ...]:
    members: list[EgressRule] = []
    for rule in np.spec.egress or ():
        to_ports = port_rules(rule.ports)
        if not rule.to:
            members.append(EgressRule(toEntities=("all",), toPorts=to_ports))
            continue
        selectors, blocks = _split_peers(rule.to, np.namespace)
        if selectors:
            members.append(EgressRule(toEndpoints=selectors, toPorts=to_ports))
        if blocks:
            members.append(EgressRule(toCIDRSet=blocks, toPorts=to_ports))
    return tuple(members) or (EgressRule(),)


def rules_from_network_policy(np: NetworkPolicy) -> list[Rule]:
    """The rule of a Kubernetes NetworkPolicy (one rule per policy).

    A direction listed in the effective policyTypes is default-deny and allows
    what its rules list (an empty rule list becomes one empty member, which
    enforces and allows nothing); a direction not listed is left alone.
    """
    types = np.spec.effective_policy_types()
    selector = np.spec.podSelector.prefixed(K8S_PREFIX).with_match(NAMESPACE_KEY, np.namespace)
    return [
        Rule(
            endpointSelector=selector,
            ingress=_ingress(np) if "Ingress" in types else None,
            egress=_egress(np) if "Egress" in types else None,
            labels=np.owner_labels,
        )
    ]
