"""Kubernetes Services, the pure part (no I/O): Service validation lives in
`k8s.manifests`; here clusterIP and nodePort allocation (`allocate`), the endpoints
controller (`endpoints`) and the desired load-balancer table (`table`), over the
types of `model`."""

from cilia.service.allocate import allocate
from cilia.service.endpoints import endpoints_for, pod_info
from cilia.service.model import (
    Backend,
    Frontend,
    Kind,
    LbService,
    PodInfo,
    Protocol,
    ServiceError,
    ServiceRanges,
)

__all__ = [
    "Backend",
    "Frontend",
    "Kind",
    "LbService",
    "PodInfo",
    "Protocol",
    "ServiceError",
    "ServiceRanges",
    "allocate",
    "endpoints_for",
    "pod_info",
]
