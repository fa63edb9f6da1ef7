"""What the agent reports about itself: agent events, regeneration metrics,
per-endpoint policy-map controllers, and the trace switches."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from cilia.agent.metrics import AgentMetrics
from cilia.agent.monitor import Monitor

if TYPE_CHECKING:
    from cilia.agent.daemon import Agent
    from cilia.agent.endpoint import Endpoint

log = logging.getLogger("cilia.agent")

POLICYMAP_CONTROLLER = "sync-policymap-{}"


class StateWatcher:
    """Turns agent state changes into monitor events and metrics."""

    def __init__(self, monitor: Monitor, metrics: AgentMetrics) -> None:
        self.monitor = monitor
        self.metrics = metrics
        self._revision: int | None = None
        self._rules = 0
        self._identities: set[int] = set()
        self._endpoints: dict[int, str] = {}

    def endpoint_regenerated(self, ep: Endpoint, reason: str, added: int, removed: int) -> None:
        """One endpoint's kernel state now matches its desired state."""
        self.metrics.regenerations["success"] += 1
        self.monitor.agent_event(
            "endpoint-regenerated",
            f"endpoint {ep.id} ({ep.name}) regenerated: {reason}, +{added}/-{removed} entries",
            endpoint=ep.id,
            revision=ep.policy_revision,
        )

    def endpoint_failed(self, ep: Endpoint, exc: BaseException) -> None:
        """Programming one endpoint failed."""
        self.metrics.regenerations["fail"] += 1
        if isinstance(exc, OSError):
            self.metrics.datapath_errors.inc()
        self.monitor.agent_event(
            "endpoint-regeneration-failed",
            f"endpoint {ep.id} ({ep.name}) regeneration failed: {exc}",
            endpoint=ep.id,
        )

    def after_regenerate(self, agent: Agent, reason: str) -> None:
        """Report what changed since the last regeneration; keep per-endpoint controllers."""
        revision, rules = agent.repo.revision, len(agent.repo.rules)
        if self._revision is not None and revision != self._revision:
            verb = "imported" if rules >= self._rules else "deleted"
            self.monitor.agent_event(
                f"policy-{verb}",
                f"policy {verb}: revision {revision}, {rules} rules ({reason})",
                revision=revision,
                rules=rules,
            )
        self._revision, self._rules = revision, rules
        ids = {i for i, _ in agent.identities.items()}
        for i in sorted(ids - self._identities):
            labels = agent.identities.labels_of(i)
            text = ", ".join(labels.to_list()) if labels is not None else ""
            self.monitor.agent_event(
                "identity-allocated", f"identity {i} allocated: {text}", identity=i
            )
        for i in sorted(self._identities - ids):
            self.monitor.agent_event("identity-released", f"identity {i} released", identity=i)
        self._identities = ids
        now = {ep.id: ep.name for ep in agent.endpoints.values()}
        for ep_id in sorted(now.keys() - self._endpoints.keys()):
            ep = agent.endpoints[ep_id]
            self.monitor.agent_event(
                "endpoint-created",
                f"endpoint {ep_id} ({ep.name}) created: {ep.ipv4}, identity {ep.identity}",
                endpoint=ep_id,
                identity=ep.identity,
            )
            agent.controllers.add(
                POLICYMAP_CONTROLLER.format(ep_id),
                agent.config.sync_interval,
                functools.partial(sync_policymap, agent, ep_id),
            )
        for ep_id in sorted(self._endpoints.keys() - now.keys()):
            self.monitor.agent_event(
                "endpoint-deleted",
                f"endpoint {ep_id} ({self._endpoints[ep_id]}) deleted",
                endpoint=ep_id,
            )
            agent.controllers.remove(POLICYMAP_CONTROLLER.format(ep_id))
        self._endpoints = now


def sync_policymap(agent: Agent, ep_id: int) -> str:
    """Controller: restore an endpoint's policy-map entries that went missing."""
    with agent.lock:
        repaired = agent.datapath.verify_endpoint_policy(ep_id)
    for line in repaired:
        log.warning("endpoint %d: %s", ep_id, line)
    return f"{len(repaired)} entries restored" if repaired else "in sync"


def set_endpoint_trace(agent: Agent, key: str, enabled: bool) -> Endpoint:
    """Switch TraceNotification for one endpoint (its entries are rewritten unchanged)."""
    with agent.lock:
        ep = agent.endpoint(key)
        ep.trace = enabled
        if ep.network is not None:
            agent.program(ep)  # with its proxy ports: flags alone must not drop redirects
        ep.set_state(ep.state, f"TraceNotification={'true' if enabled else 'false'}")
        agent.save()
    agent.monitor.agent_event(
        "endpoint-config",
        f"endpoint {ep.id} ({ep.name}): TraceNotification={enabled}",
        endpoint=ep.id,
    )
    return ep


def set_trace_all(agent: Agent, enabled: bool) -> None:
    """Switch trace events for every endpoint of the node."""
    with agent.lock:
        agent.datapath.set_trace_all(enabled)
    agent.monitor.agent_event("config", f"node-wide TraceNotification={enabled}")
