"""REST routes of services: `/v1/service` (the reference's) and the kernel's LB table."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from cilia.agent.daemon import Agent
from cilia.agent.errors import AgentError


def services_router(agent: Agent) -> APIRouter:
    """Routes bound to one agent."""
    r = APIRouter()

    @r.get("/v1/service")
    def service_list() -> list[dict[str, Any]]:
        """Every frontend with its id and backends, as the agent programmed them."""
        with agent.lock:
            return agent.services.rows()

    @r.get("/v1/service/{ident}")
    def service_get(ident: int) -> dict[str, Any]:
        with agent.lock:
            rows = [row for row in agent.services.rows() if row["id"] == ident]
        if not rows:
            raise AgentError(f"service {ident} not found", status=404)
        return rows[0]

    @r.get("/v1/bpf/lb")
    def bpf_lb() -> list[dict[str, Any]]:
        """The load-balancer maps as the kernel has them."""
        with agent.lock:
            return agent.datapath.lb.entries()

    return r
