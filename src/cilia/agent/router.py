"""A change of the node's router address across an agent restart.

Running pods stay connected: their default route names the link-local gateway, and
the datapath answers every ARP request of a pod with its router's MAC, so what
changes is only the source of the node's traffic to them (routes, ipcache `host`).
"""

from __future__ import annotations

import logging
from typing import Any

from cilia.agent.config import AgentConfig
from cilia.agent.errors import AgentError
from cilia.router import default_router_ip

log = logging.getLogger("cilia.agent")


def router_change(config: AgentConfig, state: dict[str, Any] | None) -> str | None:
    """The router address the previous run used, when it differs from the configured
    one (None otherwise); AgentError when the configured one cannot be the router."""
    if problem := config.router_problem():
        raise AgentError(f"invalid agent configuration: router_ip: {problem}")
    new = config.host_router_ip
    if state is None:
        return None
    holders = [f"{ep['namespace']}/{ep['pod']}" for ep in state["endpoints"] if ep["ipv4"] == new]
    if new in state.get("ipam_reserved", []):
        holders.append("a runtime's reservation")
    if holders:
        raise AgentError(
            f"invalid agent configuration: router_ip: {new} is the address of {holders[0]}"
        )
    previous = str(state.get("router_ip") or default_router_ip(state["pod_cidr"]))
    if previous == new:
        return None
    log.info("router address changes from %s to %s", previous, new)
    return previous
