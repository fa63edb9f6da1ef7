"""Labels, label sets, pod identity labels and label selectors."""

from cilia.labels.errors import ValidationError
from cilia.labels.k8s import (
    NAMESPACE_LABELS_PREFIX,
    POD_NAMESPACE_KEY,
    POLICY_DERIVED_FROM_KEY,
    POLICY_NAME_KEY,
    POLICY_NAMESPACE_KEY,
    SERVICE_ACCOUNT_KEY,
    is_security_relevant,
    pod_labels,
    policy_labels,
)
from cilia.labels.label import (
    SOURCE_ANY,
    SOURCE_CIDR,
    SOURCE_CONTAINER,
    SOURCE_K8S,
    SOURCE_RESERVED,
    SOURCE_UNSPEC,
    Label,
    Labels,
)
from cilia.labels.selector import LabelSelector, Operator, Requirement

__all__ = [
    "NAMESPACE_LABELS_PREFIX",
    "POD_NAMESPACE_KEY",
    "POLICY_DERIVED_FROM_KEY",
    "POLICY_NAMESPACE_KEY",
    "POLICY_NAME_KEY",
    "SERVICE_ACCOUNT_KEY",
    "SOURCE_ANY",
    "SOURCE_CIDR",
    "SOURCE_CONTAINER",
    "SOURCE_K8S",
    "SOURCE_RESERVED",
    "SOURCE_UNSPEC",
    "Label",
    "LabelSelector",
    "Labels",
    "Operator",
    "Requirement",
    "ValidationError",
    "is_security_relevant",
    "pod_labels",
    "policy_labels",
]
