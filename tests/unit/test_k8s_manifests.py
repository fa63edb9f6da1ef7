"""Manifest parsing and the errors it refuses bad input with."""

from __future__ import annotations

import pytest

from cilia.k8s import (
    CiliumNetworkPolicy,
    ManifestError,
    Namespace,
    NetworkPolicy,
    Pod,
    parse_manifests,
    rules_from_cnp,
    rules_from_network_policy,
)
from cilia.k8s.manifests import Endpoints, Service

GOOD = """
apiVersion: v1
kind: Namespace
metadata:
  name: prod
  labels: {team: a}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: prod
  labels: {app: web, pod-template-hash: abc}
  annotations: {note: x}
spec:
  serviceAccountName: web-sa
  containers:
  - name: server
    image: ignored
    command: [sleep, infinity]
    env: [{name: A, value: b}]
    ports:
    - containerPort: 80
    - {containerPort: 53, protocol: UDP, name: dns}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {}
      namespaceSelector: {matchLabels: {team: a}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports: [{port: 80}, {protocol: UDP, port: 53}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cnp, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEntities: [host]}]
specs:
- endpointSelector: {}
  egress: [{toEntities: [world]}]
status:
  nodes: {node1: {ok: true}}
---
"""


def test_parse_good_file() -> None:
    ns, pod, np, cnp = parse_manifests(GOOD, "good.yaml")
    assert isinstance(ns, Namespace) and isinstance(pod, Pod)
    assert isinstance(np, NetworkPolicy) and isinstance(cnp, CiliumNetworkPolicy)
    assert [m.key for m in (ns, pod, np, cnp)] == [
        "Namespace//prod",
        "Pod/prod/web",
        "NetworkPolicy/default/np",
        "CiliumNetworkPolicy/prod/cnp",
    ]
    assert (pod.kind, pod.namespace, pod.name) == ("Pod", "prod", "web")
    assert pod.spec.serviceAccountName == "web-sa"
    ports = pod.spec.containers[0].ports
    assert [(p.containerPort, p.protocol, p.name) for p in ports] == [
        (80, "TCP", None),
        (53, "UDP", "dns"),
    ]
    assert pod.identity_labels(ns.metadata.labels).to_list() == [
        "k8s:app=web",
        "k8s:io.cilium.k8s.namespace.labels.team=a",
        "k8s:io.cilium.k8s.policy.serviceaccount=web-sa",
        "k8s:io.kubernetes.pod.namespace=prod",
    ]
    assert len(cnp.raw_rules) == 2
    assert cnp.rules() == rules_from_cnp(cnp)
    assert np.rules() == rules_from_network_policy(np)
    assert cnp.owner_labels.to_list() == [
        "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
        "k8s:io.cilium.k8s.policy.name=cnp",
        "k8s:io.cilium.k8s.policy.namespace=prod",
    ]
    assert [m.display for m in (ns, pod)] == ["Namespace prod", "Pod prod/web"]


POD = """apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: c
    ports: [{containerPort: %s}]
"""


def error(text: str) -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifests(text, "pods.yaml")
    return str(info.value)


def test_error_message_names_everything() -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n" + POD % "0"
    assert error(text) == (
        "pods.yaml: document 2 (Pod default/web): "
        "spec.containers[0].ports[0].containerPort: must be between 1 and 65535"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (POD % "65536", "spec.containers[0].ports[0].containerPort: must be between 1 and 65535"),
        (POD % '"80"', "spec.containers[0].ports[0].containerPort: must be an integer"),
        (
            POD.replace("{containerPort: %s}", "{containerPort: 80, protocol: SCTP}"),
            "spec.containers[0].ports[0].protocol: unsupported protocol 'SCTP': must be TCP or UDP",
        ),
        (
            POD.replace("name: c", "name: c\n    imagePullPolicy: Always") % "80",
            "spec.containers[0].imagePullPolicy: unknown field",
        ),
        (POD.replace("v1", "v2") % "80", "(Pod default/web): apiVersion: must be 'v1' for Pod"),
        (
            POD.replace("Pod", "Deployment") % "80",
            "(Deployment default/web): kind: unsupported kind 'Deployment'",
        ),
        (
            POD.replace("metadata: {name: web}", "metadata: {}") % "80",
            "(Pod): metadata.name: field required",
        ),
        (
            POD.replace("{name: web}", "{name: web, labels: {app: [x]}}") % "80",
            "metadata.labels.app: must be a string",
        ),
        (
            POD.replace("{name: web}", "{name: Web_1}") % "80",
            "metadata.name: invalid name 'Web_1': must be a lowercase RFC 1123 subdomain",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n",
            "spec.containers: List should have at least 1 item",
        ),
        ("- a\n- b\n", "pods.yaml: document 1: document must be an object"),
        ("a: [\n", "pods.yaml: document 1: invalid YAML"),
        (
            POD % "80" + "---\n" + POD % "81",
            "pods.yaml: document 2 (Pod default/web): duplicate of document 1",
        ),
    ],
)
def test_pod_errors(text: str, message: str) -> None:
    assert message in error(text)


NP = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector: {}
  %s
"""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "ingress: [{ports: [{port: 0}]}]",
            "spec.ingress[0].ports[0].port: must be between 1 and 65535",
        ),
        (
            "ingress: [{ports: [{port: 70000}]}]",
            "spec.ingress[0].ports[0].port: must be between 1 and 65535",
        ),
        (
            "ingress: [{ports: [{port: http}]}]",
            "spec.ingress[0].ports[0].port: named port 'http' is not supported",
        ),
        (
            "ingress: [{ports: [{protocol: SCTP}]}]",
            "spec.ingress[0].ports[0].protocol: unsupported protocol 'SCTP': must be TCP or UDP",
        ),
        (
            "ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: Eq}]}}]}]",
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator: "
            '"Eq" is not a valid label selector operator',
        ),
        (
            "ingress: [{from: [{ipBlock: {cidr: 10.0.0.300/8}}]}]",
            "spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR '10.0.0.300/8'",
        ),
        (
            "egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]",
            "spec.egress[0].to[0]: may not specify both ipBlock and another peer",
        ),
        (
            "ingress: [{from: [{}]}]",
            "spec.ingress[0].from[0]: must specify a podSelector, namespaceSelector or ipBlock",
        ),
        ("policyTypes: [Inbound]", "spec.policyTypes[0]: Input should be 'Ingress' or 'Egress'"),
        ("ingress: [{form: []}]", "spec.ingress[0].form: unknown field"),
        (
            "ingress: [{from: [{podSelector: {matchLabels: {'k8s:app': x}}}]}]",
            "spec.ingress[0].from[0].podSelector.matchLabels.k8s:app: invalid label key 'k8s:app'",
        ),
    ],
)
def test_network_policy_errors(body: str, message: str) -> None:
    assert error(NP % body) == f"pods.yaml: document 1 (NetworkPolicy x/np): {message}"


CNP = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cnp}
%s
"""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "spec: Invalid CiliumNetworkPolicy spec(s): empty policy"),
        (
            "specs:\n- endpointSelector: {}\n- endpointSelector: {}\n"
            "  ingress: [{fromEndpoints: [{}], fromCIDRSet: [{cidr: 10.0.0.0/8}]}]",
            "specs[1].ingress[0]: Combining FromEndpoints and FromCIDRSet is not supported yet",
        ),
        (
            "spec:\n  endpointSelector: {}\n  egress: [{toPorts: [{ports: [{port: '0'}]}]}]",
            "spec.egress[0].toPorts[0].ports[0].port: port must be between 1 and 65535",
        ),
        (
            "spec: {endpointSelector: {}, egress: [{toCIDR: [bogus]}]}",
            "spec.egress[0].toCIDR[0]: invalid CIDR 'bogus'",
        ),
        ("spec: {endpointSelector: {}}\nextra: 1", "extra: unknown field"),
    ],
)
def test_cnp_errors(body: str, message: str) -> None:
    assert (
        error(CNP % body) == f"pods.yaml: document 1 (CiliumNetworkPolicy default/cnp): {message}"
    )


def test_nothing_returned_when_any_document_is_bad() -> None:
    text = GOOD + POD % "0"
    with pytest.raises(ManifestError) as info:
        parse_manifests(text, "all.yaml")
    assert info.value.document == 5
    assert info.value.path == "spec.containers[0].ports[0].containerPort"


def test_service_and_endpoints() -> None:
    svc, ep = parse_manifests(
        """
apiVersion: v1
kind: Service
metadata: {name: db, namespace: prod, labels: {tier: data}}
spec: {ports: [{port: 5432, targetPort: 5432}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: db, namespace: prod}
subsets:
- addresses: [{ip: 198.51.100.7}, {ip: 198.51.100.8}, {ip: 198.51.100.7}]
  ports: [{port: 5432}]
""",
        "svc.yaml",
    )
    assert isinstance(svc, Service) and svc.spec.selector is None
    assert isinstance(ep, Endpoints) and ep.addresses == ["198.51.100.7", "198.51.100.8"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: e}\n"
            "subsets: [{addresses: [{ip: 300.1.1.1}]}]\n",
            "subsets[0].addresses[0].ip: invalid IP address '300.1.1.1'",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: e}\nspec: {ports: [{port: 0}]}\n",
            "spec.ports[0].port: must be between 1 and 65535",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: e}\nspec: {clusterIPs: []}\n",
            "spec.clusterIPs",
        ),
    ],
)
def test_service_errors(text: str, message: str) -> None:
    assert message in error(text)
