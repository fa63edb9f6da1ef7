"""Which pods get an Istio-style sidecar, and with what settings (pure: no I/O).

Istio's conventions: a pod annotated `sidecar.istio.io/inject: "true"`, or any pod of
a namespace labelled `istio-injection=enabled` unless the pod says `"false"`, gets a
sidecar (UID 1337) capturing its TCP traffic; `traffic.sidecar.istio.io/
excludeOutboundPorts` and `excludeInboundPorts` list ports left alone. The namespace
annotation `cilia.io/mtls-mode` sets the mTLS mode with PeerAuthentication's names
(STRICT, PERMISSIVE, DISABLE; PERMISSIVE by default, as in Istio). A pod without a
service account gets `default`, as in Kubernetes. The settings are refused whole,
naming the pod and the field, when an annotation is malformed or a container port
collides with the sidecar's own (15000-15090).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from cilia.k8s.manifests import Pod

INJECT = "sidecar.istio.io/inject"
NAMESPACE_INJECTION = "istio-injection"
EXCLUDE_OUTBOUND = "traffic.sidecar.istio.io/excludeOutboundPorts"
EXCLUDE_INBOUND = "traffic.sidecar.istio.io/excludeInboundPorts"
MTLS_MODE = "cilia.io/mtls-mode"

SIDECAR_UID = 1337
"""The sidecar's user: its own traffic is never captured."""
INBOUND_PORT = 15006
OUTBOUND_PORT = 15001
NEVER_CAPTURED = (15000, 15020, 15021, 15090)
"""The sidecar's admin, agent, health and Prometheus ports."""
RESERVED = range(15000, 15091)
"""Ports the sidecar may use: no container of the pod may listen there."""

SIDECAR_LABEL = "io.cilium.k8s.policy.istiosidecarproxy"
"""The label the reference gives endpoints with a sidecar (policies select on it)."""

MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
MTLS_MODES: tuple[MtlsMode, ...] = ("STRICT", "PERMISSIVE", "DISABLE")


class InjectionError(ValueError):
    """A pod's sidecar settings refused: `pod` (`ns/name`), `field`, `reason`."""

    def __init__(self, pod: str, field: str, reason: str) -> None:
        super().__init__(f"pod {pod}: {field}: {reason}")
        self.pod, self.field, self.reason = pod, field, reason


@dataclass(frozen=True)
class SidecarSettings:
    """What one pod's sidecar is."""

    service_account: str
    exclude_outbound: tuple[int, ...]
    exclude_inbound: tuple[int, ...]
    mtls: MtlsMode
    labels: Mapping[str, str]
    """The labels injection adds to the pod's (Istio's, and the reference's)."""


def _annotation(key: str) -> str:
    return f"metadata.annotations[{key}]"


def _ports(pod: str, key: str, text: str) -> tuple[int, ...]:
    """A comma-separated port list (spaces allowed, empty allowed)."""
    out: list[int] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise InjectionError(
                pod, _annotation(key), f"{item!r} is not a port (1-65535, comma-separated)"
            )
        out.append(int(item))
    return tuple(sorted(set(out)))


def wants_sidecar(pod: Pod, namespace_labels: Mapping[str, str]) -> bool:
    """Does the pod get a sidecar? Its annotation decides, else its namespace's label."""
    value = pod.metadata.annotations.get(INJECT)
    if value is None:
        return namespace_labels.get(NAMESPACE_INJECTION) == "enabled"
    if value not in ("true", "false"):
        raise InjectionError(
            f"{pod.namespace}/{pod.name}", _annotation(INJECT), f"{value!r}: must be true or false"
        )
    return value == "true"


def canonical_name(pod: Pod) -> str:
    """Istio's canonical service name: its own label, app.kubernetes.io/name, app, or
    the pod's name."""
    labels = pod.metadata.labels
    for key in ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app"):
        if labels.get(key):
            return labels[key]
    return pod.name


def sidecar_settings(
    pod: Pod, namespace_labels: Mapping[str, str], namespace_annotations: Mapping[str, str]
) -> SidecarSettings | None:
    """The pod's sidecar settings, or None when it gets no sidecar; raises
    InjectionError naming the pod and field of what is refused."""
    if not wants_sidecar(pod, namespace_labels):
        return None
    ref = f"{pod.namespace}/{pod.name}"
    for c, container in enumerate(pod.spec.containers):
        for p, port in enumerate(container.ports):
            if port.containerPort in RESERVED:
                raise InjectionError(
                    ref,
                    f"spec.containers[{c}].ports[{p}].containerPort",
                    f"{port.containerPort} is the sidecar's (15000-15090 are reserved)",
                )
    notes = pod.metadata.annotations
    mode = namespace_annotations.get(MTLS_MODE, "PERMISSIVE")
    if mode not in MTLS_MODES:
        raise InjectionError(
            ref,
            f"namespace {pod.namespace}: {_annotation(MTLS_MODE)}",
            f"unknown mTLS mode {mode!r} (STRICT, PERMISSIVE or DISABLE)",
        )
    labels = {
        SIDECAR_LABEL: "true",
        "security.istio.io/tlsMode": "istio",
        "service.istio.io/canonical-name": canonical_name(pod),
        "service.istio.io/canonical-revision": pod.metadata.labels.get("version", "latest"),
    }
    return SidecarSettings(
        service_account=pod.spec.serviceAccountName or "default",
        exclude_outbound=_ports(ref, EXCLUDE_OUTBOUND, notes.get(EXCLUDE_OUTBOUND, "")),
        exclude_inbound=_ports(ref, EXCLUDE_INBOUND, notes.get(EXCLUDE_INBOUND, "")),
        mtls=mode,  # narrowed to MtlsMode by the check against MTLS_MODES above
        labels=labels,
    )
