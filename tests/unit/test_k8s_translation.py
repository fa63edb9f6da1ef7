"""CiliumNetworkPolicy and NetworkPolicy translation, checked through resolution."""

from __future__ import annotations

from cilia.k8s import (
    CiliumNetworkPolicy,
    NetworkPolicy,
    parse_manifests,
    rules_from_cnp,
    rules_from_network_policy,
)
from cilia.labels import Labels, LabelSelector, pod_labels
from cilia.policy import Direction, EndpointPolicy, Protocol, Rule, resolve

IN, E = Direction.INGRESS, Direction.EGRESS
TCP, UDP, ANY = Protocol.TCP, Protocol.UDP, Protocol.ANY

NS_LABELS = {"x": {"team": "a"}, "y": {"team": "b"}, "z": {"team": "a", "env": "dev"}}


def pod(ns: str, app: str) -> Labels:
    return pod_labels({"app": app}, ns, NS_LABELS[ns], None)


PODS = {f"{ns}/{app}": pod(ns, app) for ns in ("x", "y", "z") for app in ("a", "b", "c")}
IDS = {256 + i: labels for i, labels in enumerate(PODS.values())}
ID_OF = {name: 256 + i for i, name in enumerate(PODS)}


def cnp(text: str) -> list[Rule]:
    [obj] = parse_manifests(text, "t.yaml")
    assert isinstance(obj, CiliumNetworkPolicy)
    return rules_from_cnp(obj)


def np(text: str) -> list[Rule]:
    [obj] = parse_manifests(text, "t.yaml")
    assert isinstance(obj, NetworkPolicy)
    return rules_from_network_policy(obj)


def peers(p: EndpointPolicy, direction: Direction = IN) -> set[str]:
    names = {v: k for k, v in ID_OF.items()}
    return {names.get(e.identity, str(e.identity)) for e in p.entries if e.direction is direction}


CNP_BASIC = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    fromRequires: [{matchLabels: {app: b}}]
  - fromEndpoints: [{matchLabels: {"reserved:host": ""}}]
  egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": y}}]
"""


def test_cnp_scoping_and_labels() -> None:
    [rule] = cnp(CNP_BASIC)
    assert rule.labels.to_list() == [
        "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
        "k8s:io.cilium.k8s.policy.name=allow-b",
        "k8s:io.cilium.k8s.policy.namespace=x",
    ]
    assert rule.endpointSelector.to_dict() == {
        "matchLabels": {"app": "a", "k8s:io.kubernetes.pod.namespace": "x"}
    }
    assert rule.ingress is not None and rule.egress is not None
    ns_scoped = {"matchLabels": {"app": "b", "k8s:io.kubernetes.pod.namespace": "x"}}
    assert rule.ingress[0].fromEndpoints[0].to_dict() == ns_scoped  # type: ignore[index]
    assert rule.ingress[0].fromRequires[0].to_dict() == ns_scoped  # type: ignore[index]
    assert rule.ingress[1].fromEndpoints[0].to_dict() == {"matchLabels": {"reserved:host": ""}}  # type: ignore[index]
    assert rule.egress[0].toEndpoints[0].to_dict() == {  # type: ignore[index]
        "matchLabels": {"k8s:io.kubernetes.pod.namespace": "y"}
    }


def test_cnp_resolution() -> None:
    rules = cnp(CNP_BASIC)
    p = resolve(rules, PODS["x/a"], IDS)
    assert p.ingress_enforced and p.egress_enforced
    # the requirement (app=b in x) also removes the host entry
    assert peers(p, IN) == {"x/b"}
    assert peers(p, E) == {"y/a", "y/b", "y/c"}
    assert not resolve(rules, PODS["y/a"], IDS).ingress_enforced


def test_cnp_init_rule_not_scoped_and_rule_labels_kept() -> None:
    rules = cnp(
        """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: init, namespace: x}
specs:
- endpointSelector: {matchLabels: {"reserved:init": ""}}
  ingress: [{fromEntities: [host]}]
  egress: [{toEndpoints: [{matchLabels: {app: dns}}]}]
  labels: ["custom=1"]
"""
    )
    [rule] = rules
    assert rule.endpointSelector.to_dict() == {"matchLabels": {"reserved:init": ""}}
    assert rule.egress[0].toEndpoints[0].to_dict() == {"matchLabels": {"app": "dns"}}  # type: ignore[index]
    assert "unspec:custom=1" in rule.labels
    assert "k8s:io.cilium.k8s.policy.name=init" in rule.labels
    p = resolve(rules, Labels.parse(["reserved:init"]), IDS)
    assert {(e.identity, e.port) for e in p.entries if e.direction is IN} == {(1, 0)}


NP = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
%s
"""


def test_np_labels_and_selector() -> None:
    [rule] = np(NP % "  ingress: [{}]")
    assert rule.labels.to_list() == [
        "k8s:io.cilium.k8s.policy.derived-from=NetworkPolicy",
        "k8s:io.cilium.k8s.policy.name=np",
        "k8s:io.cilium.k8s.policy.namespace=x",
    ]
    assert rule.endpointSelector == LabelSelector(
        {"k8s:app": "a", "k8s:io.kubernetes.pod.namespace": "x"}
    )
    assert rule.egress is None


def test_np_pod_selector_only_means_own_namespace() -> None:
    p = resolve(
        np(NP % "  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]"), PODS["x/a"], IDS
    )
    assert peers(p) == {"x/b"}
    assert {(e.port, e.protocol) for e in p.entries} == {(0, ANY)}


def test_np_namespace_selector_only() -> None:
    rules = np(NP % "  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]")
    assert peers(resolve(rules, PODS["x/a"], IDS)) == {"x/a", "x/b", "x/c", "z/a", "z/b", "z/c"}


def test_np_empty_namespace_selector_means_all_pods() -> None:
    rules = np(NP % "  ingress: [{from: [{namespaceSelector: {}}]}]")
    assert peers(resolve(rules, PODS["x/a"], IDS)) == set(PODS)


def test_np_namespace_and_pod_selector_is_and() -> None:
    rules = np(
        NP
        % """  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: env, operator: DoesNotExist}]}
      podSelector: {matchLabels: {app: b}}"""
    )
    assert peers(resolve(rules, PODS["x/a"], IDS)) == {"x/b", "y/b"}


def test_np_two_peers_are_or() -> None:
    rules = np(
        NP
        % """  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: b}}
    - podSelector: {matchLabels: {app: c}}"""
    )
    assert peers(resolve(rules, PODS["x/a"], IDS)) == {"y/a", "y/b", "y/c", "x/c"}


def test_np_empty_from_means_all_and_ports_default_tcp() -> None:
    rules = np(NP % "  ingress: [{ports: [{port: 80}, {port: 53, protocol: UDP}]}]")
    p = resolve(rules, PODS["x/a"], IDS)
    assert {(e.identity, e.port, e.protocol) for e in p.entries} == {(0, 80, TCP), (0, 53, UDP)}
    assert p.allows(IN, 9999, 80, TCP)
    assert not p.allows(IN, 9999, 80, UDP)


def test_np_port_without_number_means_all_ports_of_its_protocol() -> None:
    rules = np(NP % "  ingress: [{ports: [{protocol: UDP}]}]")
    p = resolve(rules, PODS["x/a"], IDS)
    assert {(e.identity, e.port, e.protocol) for e in p.entries} == {(0, 0, UDP)}
    assert p.allows(IN, 9999, 81, UDP) and not p.allows(IN, 9999, 81, TCP)


def test_np_empty_ingress_denies_all() -> None:
    for body in ("  policyTypes: [Ingress]", "  policyTypes: [Ingress]\n  ingress: []"):
        [rule] = np(NP % body)
        p = resolve([rule], PODS["x/a"], IDS)
        assert p.ingress_enforced and not p.egress_enforced
        assert p.entries == frozenset()


def test_np_policy_types_defaults() -> None:
    [rule] = np(NP % "  egress: [{to: [{podSelector: {}}]}]")
    assert rule.ingress is not None and rule.egress is not None
    p = resolve([rule], PODS["x/a"], IDS)
    assert p.ingress_enforced and p.egress_enforced
    assert peers(p, E) == {"x/a", "x/b", "x/c"}
    [egress_only] = np(NP % "  policyTypes: [Egress]\n  egress: []")
    assert egress_only.ingress is None
    p = resolve([egress_only], PODS["x/a"], IDS)
    assert (p.ingress_enforced, p.egress_enforced, len(p.entries)) == (False, True, 0)


def test_np_egress_empty_to_and_ip_block() -> None:
    [rule] = np(
        NP
        % """  policyTypes: [Egress]
  egress:
  - ports: [{port: 53, protocol: UDP}]
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}
    - podSelector: {matchLabels: {app: b}}"""
    )
    assert rule.egress is not None
    assert rule.egress[0].toEntities == ("all",)
    assert rule.egress[1].toEndpoints is not None
    block = rule.egress[2].toCIDRSet[0]  # type: ignore[index]
    assert (block.cidr, block.except_) == ("0.0.0.0/0", ("10.0.0.0/8",))
    p = resolve([rule], PODS["x/a"], IDS)
    assert {(e.identity, e.port, e.protocol) for e in p.entries} == {
        (0, 53, UDP),
        (ID_OF["x/b"], 0, ANY),
    }  # 0.0.0.0/0 has no CIDR identity here: the block allows nothing yet


def test_np_many_ports_are_split() -> None:
    ports = ", ".join(f"{{port: {p}}}" for p in range(1000, 1050))
    [rule] = np(NP % f"  ingress: [{{ports: [{ports}]}}]")
    assert rule.ingress is not None and rule.ingress[0].toPorts is not None
    assert [len(pr.ports or ()) for pr in rule.ingress[0].toPorts] == [40, 10]


def test_several_policies_union() -> None:
    rules = np(NP % "  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]") + np(
        (NP % "  ingress: [{from: [{podSelector: {matchLabels: {app: c}}}]}]").replace(
            "name: np", "name: np2"
        )
    )
    assert peers(resolve(rules, PODS["x/a"], IDS)) == {"x/b", "x/c"}
