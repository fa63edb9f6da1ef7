"""Kubernetes objects: manifests and their translation into policy rules."""

from cilia.k8s.manifests import (
    CiliumNetworkPolicy,
    Manifest,
    ManifestError,
    Namespace,
    NetworkPolicy,
    Pod,
    parse_manifest,
    parse_manifests,
)
from cilia.k8s.policy_translation import (
    rules_from_cnp,
    rules_from_network_policy,
    scope_rule,
)
from cilia.labels import policy_labels

__all__ = [
    "CiliumNetworkPolicy",
    "Manifest",
    "ManifestError",
    "Namespace",
    "NetworkPolicy",
    "Pod",
    "parse_manifest",
    "parse_manifests",
    "policy_labels",
    "rules_from_cnp",
    "rules_from_network_policy",
    "scope_rule",
]
