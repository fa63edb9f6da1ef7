"""The agent's store of applied objects (Namespaces, Pods, policies, Services, Endpoints)."""

from __future__ import annotations

import logging
from typing import Any, Literal

from cilia.k8s.manifests import (
    CiliumNetworkPolicy,
    Endpoints,
    Manifest,
    Namespace,
    NetworkPolicy,
    ObjectConflict,
    Pod,
    Service,
    describe,
    display,
    dump,
    parse_manifest,
)
from cilia.policy.errors import ValidationError
from cilia.policy.services import ServiceBackends

log = logging.getLogger("cilia.agent")

__all__ = ["ObjectConflict", "ObjectStore", "display", "dump"]


Action = Literal["created", "configured", "unchanged"]

# Namespaces first (pods need their labels), policies before pods (a new pod
# is born under the policy applied with it), pods last.
_APPLY_ORDER = {
    "Namespace": 0,
    "NetworkPolicy": 1,
    "CiliumNetworkPolicy": 1,
    "Service": 1,
    "Endpoints": 1,
    "Pod": 2,
}


class ObjectStore:
    """Applied objects by key (`Kind/namespace/name`)."""

    def __init__(self) -> None:
        self._objects: dict[str, Manifest] = {}
        self._dumped: dict[str, dict[str, Any]] = {}
        """Persistable form of each object (they are frozen), made on the first save."""

    def plan_apply(self, manifests: list[Manifest]) -> list[tuple[Manifest, Action]]:
        """What applying would do, in apply order; refuses impossible updates first."""
        plan: list[tuple[Manifest, Action]] = []
        for m in sorted(manifests, key=lambda m: _APPLY_ORDER[m.kind]):
            old = self._objects.get(m.key)
            if old is None:
                plan.append((m, "created"))
            elif dump(old) == dump(m):
                plan.append((m, "unchanged"))
            else:
                if (
                    isinstance(old, Pod)
                    and isinstance(m, Pod)
                    and dump(old)["spec"] != dump(m)["spec"]
                ):
                    raise ObjectConflict(
                        f"{display(m)}: spec.containers of a running pod cannot change "
                        "(only labels and annotations can); delete the pod and apply it again"
                    )
                plan.append((m, "configured"))
        return plan

    def put(self, obj: Manifest) -> None:
        """Store or replace an object."""
        self._objects[obj.key] = obj
        self._dumped.pop(obj.key, None)

    def remove(self, key: str) -> Manifest | None:
        """Forget an object."""
        self._dumped.pop(key, None)
        return self._objects.pop(key, None)

    def get(self, key: str) -> Manifest | None:
        """An object by key."""
        return self._objects.get(key)

    def keys(self) -> set[str]:
        """Keys of every stored object."""
        return set(self._objects)

    def pod(self, namespace: str, name: str) -> Pod | None:
        """A pod by namespace and name."""
        obj = self._objects.get(f"Pod/{namespace}/{name}")
        return obj if isinstance(obj, Pod) else None

    def namespace_labels(self, name: str) -> dict[str, str]:
        """Labels of a namespace ({} when it was never applied)."""
        obj = self._objects.get(f"Namespace//{name}")
        return dict(obj.metadata.labels) if isinstance(obj, Namespace) else {}

    def of_kind(self, *kinds: str) -> list[Manifest]:
        """Objects of the given kinds, sorted by key."""
        return [o for k, o in sorted(self._objects.items()) if o.kind in kinds]

    def to_state(self) -> list[dict[str, Any]]:
        """Persistable form (shared: not to be changed)."""
        for key, obj in self._objects.items():
            if key not in self._dumped:
                self._dumped[key] = dump(obj)
        return [self._dumped[key] for key in sorted(self._objects)]

    @classmethod
    def from_state(cls, items: list[dict[str, Any]]) -> ObjectStore:
        """Rebuild from to_state() output; an object this version refuses (one stored by
        an older agent with laxer rules, such as a Service without ports) is left out and
        logged, so the rest still restores."""
        store = cls()
        for raw in items:
            try:
                store.put(parse_manifest(raw))
            except ValidationError as exc:
                log.warning("stored object %s dropped: %s", describe(raw), exc)
        return store

    def listing(self, kind: str, pod_status: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows for `cilia get KIND`: pods, namespaces or policies."""
        if kind == "pods":
            return [
                {
                    "namespace": o.namespace,
                    "name": o.name,
                    "labels": dict(o.metadata.labels),
                    "node": o.spec.nodeName or "",
                    "state": "pending",  # until its node reports it
                    **pod_status.get(o.key, {}),
                    "object": dump(o),
                }
                for o in self.of_kind("Pod")
                if isinstance(o, Pod)
            ]
        if kind == "namespaces":
            return [
                {"name": o.name, "labels": dict(o.metadata.labels), "object": dump(o)}
                for o in self.of_kind("Namespace")
            ]
        if kind == "policies":
            return [
                {
                    "namespace": o.namespace,
                    "name": o.name,
                    "kind": o.kind,
                    "rules": len(o.rules()),
                    "object": dump(o),
                }
                for o in self.of_kind("NetworkPolicy", "CiliumNetworkPolicy")
                if isinstance(o, NetworkPolicy | CiliumNetworkPolicy)
            ]
        if kind == "services":
            return [
                {
                    "namespace": o.namespace,
                    "name": o.name,
                    "selector": o.spec.selector,
                    "backends": self.backends(o),
                    "object": dump(o),
                }
                for o in self.of_kind("Service")
                if isinstance(o, Service)
            ]
        raise ValueError(f"unknown kind {kind!r}: pods, namespaces, policies or services")

    def backends(self, service: Service) -> list[str]:
        """The addresses of the Endpoints object named like `service`."""
        ep = self._objects.get(f"Endpoints/{service.namespace}/{service.name}")
        return ep.addresses if isinstance(ep, Endpoints) else []

    def services(self) -> list[ServiceBackends]:
        """Every Service with its labels, whether it selects pods, and its backends."""
        return [
            ServiceBackends(
                o.namespace,
                o.name,
                dict(o.metadata.labels),
                o.spec.selector is not None,
                tuple(self.backends(o)),
            )
            for o in self.of_kind("Service")
            if isinstance(o, Service)
        ]
