"""The agent's side of the runtime interface: endpoints of containers made elsewhere.

The CNI plugin (over `PUT/PATCH/DELETE /v1/endpoint`), the Docker network driver and
the runtime label watchers (in-process) all come through `Workloads`, which is the
`EndpointOwner` of `cilia.runtime.owner`. Local pods take the same `_create_endpoint`
path inside the agent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cilia.agent.errors import AgentError
from cilia.agent.ipam import IpamExhausted
from cilia.datapath.netns import is_netns
from cilia.datapath.pod_network import check_pod_network
from cilia.identity import INIT, RESERVED_LABELS
from cilia.labels import Labels
from cilia.runtime.owner import IPV6_OFF, EndpointPatch, EndpointRequest, Family

if TYPE_CHECKING:
    from cilia.agent.daemon import Agent
    from cilia.agent.endpoint import Endpoint

log = logging.getLogger("cilia.agent")


def _parse_labels(labels: list[str], field: str) -> Labels:
    try:
        return Labels.parse(labels)
    except ValueError as exc:
        raise AgentError(f"{field}: {exc}") from None


class Workloads:
    """Create, change and remove the endpoints of runtimes' containers."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def endpoint_put(self, req: EndpointRequest) -> dict[str, Any]:
        """Create the endpoint of a container; returns once its policy is enforced."""
        if req.runtime == "local":
            raise AgentError("runtime: 'local' is reserved for the agent's own pods")
        labels = (
            RESERVED_LABELS[INIT] if req.labels is None else _parse_labels(req.labels, "labels")
        )
        if not req.peer_in_host and not is_netns(req.netns):
            raise AgentError(f"netns: {req.netns} is not a network namespace")
        agent = self.agent
        if req.ipv6 is not None and agent.ipam6 is None:
            raise AgentError(f"ipv6: {IPV6_OFF}")
        if req.ipv6 is not None and req.ipv4 is None:
            raise AgentError("ipv6: reserve the ipv4 address too (POST /v1/ipam)")
        with agent.lock:
            existing = self._by_container(req.container_id)
            if existing is not None:
                if (existing.netns, existing.pod_ifname) != (req.netns, req.interface_name):
                    raise AgentError(
                        f"container-id: {req.container_id} already has endpoint {existing.id} "
                        f"on {existing.netns} ({existing.pod_ifname})",
                        status=409,
                    )
                return existing.to_api()
            try:
                ep = agent._create_endpoint(req, labels)
            except IpamExhausted as exc:
                raise AgentError(str(exc), status=503) from None
            try:
                agent.regenerate(f"endpoint {ep.id} of {req.runtime} container created")
            except BaseException:
                agent._destroy_endpoint(ep)
                raise
            agent.save()
            log.info(
                "endpoint %d for %s container %s: %s identity %d",
                ep.id,
                req.runtime,
                req.container_id,
                ep.ipv4,
                ep.identity,
            )
            return ep.to_api()

    def endpoint_patch(self, key: str, patch: EndpointPatch) -> dict[str, Any]:
        """Change a container endpoint's labels or names; it moves to its new identity
        within this call."""
        agent = self.agent
        with agent.lock:
            ep = agent.endpoint(key)
            if ep.is_local_pod:
                raise AgentError(
                    f"endpoint {ep.id} is a local pod: its labels come from its Pod object "
                    "(use `cilia endpoint labels` to add some)",
                    status=409,
                )
            if patch.labels is not None:
                ep.runtime_labels = _parse_labels(patch.labels, "labels")
            if patch.namespace is not None:
                ep.namespace = patch.namespace
            if patch.name is not None:
                ep.pod = patch.name
            agent.relabel_endpoints()
            agent.regenerate(f"endpoint {ep.id} changed by its runtime")
            agent.save()
            return ep.to_api()

    def endpoint_remove(self, key: str) -> bool:
        """Remove a container's endpoint; False when there is none."""
        agent = self.agent
        with agent.lock:
            try:
                ep = agent.endpoint(key)
            except AgentError:
                return False
            if ep.is_local_pod:
                raise AgentError(
                    f"endpoint {ep.id} is a local pod: delete the pod instead", status=409
                )
            agent._destroy_endpoint(ep)
            agent.regenerate(f"endpoint {ep.id} of {ep.runtime} container removed")
            agent.save()
            log.info("endpoint %d of container %s removed", ep.id, ep.container_id)
            return True

    def endpoint_views(self) -> list[dict[str, Any]]:
        with self.agent.lock:
            return [ep.to_api() for ep in self.agent.endpoints.values()]

    def endpoint_check(self, key: str) -> list[str]:
        """What is wrong with an endpoint's device, address, routes or programs."""
        agent = self.agent
        with agent.lock:
            ep = agent.endpoint(key)
            if ep.network is None:
                return [f"endpoint {ep.id} has no network"]
            problems = check_pod_network(ep.network)
            if not problems and not agent.datapath.is_attached(ep.ifname, ep.network.host_ifindex):
                problems.append(f"programs are not attached to {ep.ifname}")
            return problems

    def ipam_allocate(self, family: Family = "ipv4") -> str:
        agent = self.agent
        with agent.lock:
            ipam = agent.ipam6 if family == "ipv6" else agent.ipam
            if ipam is None:
                raise AgentError(IPV6_OFF, status=409)
            try:
                ip = ipam.allocate()
            except IpamExhausted as exc:
                raise AgentError(str(exc), status=503) from None
            agent.ipam_reserved.add(ip)
            return ip

    def ipam_release(self, ip: str) -> None:
        agent = self.agent
        with agent.lock:
            if ip in agent.ipam_reserved:
                agent.ipam_reserved.discard(ip)
                agent.ipam.release(ip)
                if agent.ipam6 is not None:
                    agent.ipam6.release(ip)

    def _by_container(self, container_id: str) -> Endpoint | None:
        return next(
            (e for e in self.agent.endpoints.values() if e.container_id == container_id), None
        )
