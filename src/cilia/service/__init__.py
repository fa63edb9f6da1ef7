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
from cilia.service.table import endpoints_key, lb_services, service_name

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
    "endpoints_key",
    "lb_services",
    "pod_info",
    "service_name",
]
