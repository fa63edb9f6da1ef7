"""Security-relevant labels of a Kubernetes pod."""

from __future__ import annotations

from collections.abc import Mapping

from cilia.labels.label import SOURCE_K8S, Label, Labels

POD_NAMESPACE_KEY = "io.kubernetes.pod.namespace"
SERVICE_ACCOUNT_KEY = "io.cilium.k8s.policy.serviceaccount"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
POLICY_NAME_KEY = "io.cilium.k8s.policy.name"
POLICY_NAMESPACE_KEY = "io.cilium.k8s.policy.namespace"
POLICY_DERIVED_FROM_KEY = "io.cilium.k8s.policy.derived-from"

_IGNORED_KEYS = frozenset(
    {"pod-template-hash", "controller-revision-hash", "pod-template-generation", "etcd_node"}
)
_KEPT_DOMAINS = ("app.kubernetes.io",)


def is_security_relevant(key: str) -> bool:
    """False for pod label keys that must not influence the identity.

    Dropped: controller bookkeeping (`pod-template-hash`, ...), keys under
    `kubernetes.io`/`k8s.io` domains other than `app.kubernetes.io`, and keys
    Cilia sets itself (`io.kubernetes.*`, `io.cilium.k8s.*`), which a pod must
    not be able to spoof.
    """
    if key in _IGNORED_KEYS or key.startswith(("io.kubernetes.", "io.cilium.k8s.")):
        return False
    domain, slash, _ = key.rpartition("/")
    if not slash or domain in _KEPT_DOMAINS:
        return True
    return not (
        domain in ("kubernetes.io", "k8s.io") or domain.endswith((".kubernetes.io", ".k8s.io"))
    )


def pod_labels(
    labels: Mapping[str, str],
    namespace: str,
    namespace_labels: Mapping[str, str],
    service_account: str | None,
) -> Labels:
    """The identity labels of a pod: filtered pod labels plus namespace and account labels."""
    out = [Label(SOURCE_K8S, k, v) for k, v in labels.items() if is_security_relevant(k)]
    out.extend(
        Label(SOURCE_K8S, NAMESPACE_LABELS_PREFIX + k, v) for k, v in namespace_labels.items()
    )
    out.append(Label(SOURCE_K8S, POD_NAMESPACE_KEY, namespace))
    if service_account:
        out.append(Label(SOURCE_K8S, SERVICE_ACCOUNT_KEY, service_account))
    return Labels(out)


def policy_labels(name: str, namespace: str, kind: str) -> Labels:
    """The labels of every rule derived from the Kubernetes policy object `kind` ns/name."""
    return Labels(
        [
            Label(SOURCE_K8S, POLICY_NAME_KEY, name),
            Label(SOURCE_K8S, POLICY_NAMESPACE_KEY, namespace),
            Label(SOURCE_K8S, POLICY_DERIVED_FROM_KEY, kind),
        ]
    )
