"""REST routes for observing the datapath: monitor stream, metrics, CT table, trace switches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from cilia.agent.daemon import Agent
from cilia.agent.errors import AgentError
from cilia.agent.monitor import EVENT_TYPES, Filter
from cilia.agent.observe import set_endpoint_trace, set_trace_all
from cilia.datapath import conntrack
from cilia.datapath.manager import boottime


class EndpointConfig(BaseModel):
    """Endpoint options (the reference's names)."""

    trace_notification: bool | None = Field(None, alias="TraceNotification")


class NodeConfig(BaseModel):
    """Node-wide runtime options."""

    trace_notification: bool | None = Field(None, alias="TraceNotification")


def observe_router(agent: Agent) -> APIRouter:
    """Routes bound to one agent."""
    r = APIRouter()

    @r.get("/v1/monitor")
    async def monitor_stream(
        types: list[str] = Query(default=[]),  # noqa: B008
        related_to: int | None = None,
        from_identity: int | None = None,
        to_identity: int | None = None,
    ) -> StreamingResponse:
        unknown = set(types) - set(EVENT_TYPES)
        if unknown:
            raise AgentError(f"unknown event types {sorted(unknown)}; use {list(EVENT_TYPES)}")
        flt = Filter(frozenset(types or EVENT_TYPES), related_to, from_identity, to_identity)
        sub = agent.monitor.subscribe(flt, asyncio.get_running_loop())

        async def lines() -> AsyncIterator[bytes]:
            try:
                yield (json.dumps({"type": "start", "filter": _filter_api(flt)}) + "\n").encode()
                while True:
                    batch = await sub.next_batch(1.0)
                    if batch:
                        yield "".join(json.dumps(ev) + "\n" for ev in batch).encode()
            finally:
                agent.monitor.unsubscribe(sub)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @r.get("/v1/metrics")
    def metrics_list() -> list[dict[str, Any]]:
        return agent.metrics.samples()

    @r.get("/v1/bpf/ct")
    def ct_list(endpoint: int | None = None) -> list[dict[str, Any]]:
        return conntrack.entries(agent.datapath.ct, boottime(), endpoint)

    @r.delete("/v1/bpf/ct")
    def ct_flush(endpoint: int | None = None) -> dict[str, Any]:
        deleted = conntrack.flush(agent.datapath.ct, endpoint)
        agent.monitor.agent_event(
            "ct-flushed",
            f"CT table flushed ({'endpoint ' + str(endpoint) if endpoint else 'global'}): "
            f"{deleted} entries",
            deleted=deleted,
        )
        return {"deleted": deleted}

    @r.patch("/v1/endpoint/{key:path}/config")
    def endpoint_config(key: str, cfg: EndpointConfig) -> dict[str, Any]:
        ep = agent.endpoint(key)
        if cfg.trace_notification is not None:
            ep = set_endpoint_trace(agent, key, cfg.trace_notification)
        return {"id": ep.id, "TraceNotification": ep.trace}

    @r.get("/v1/endpoint/{key:path}/config")
    def endpoint_config_get(key: str) -> dict[str, Any]:
        ep = agent.endpoint(key)
        return {"id": ep.id, "TraceNotification": ep.trace}

    @r.get("/v1/config/options")
    def node_options() -> dict[str, Any]:
        return {"TraceNotification": agent.datapath.trace_all}

    @r.patch("/v1/config/options")
    def node_options_set(cfg: NodeConfig) -> dict[str, Any]:
        if cfg.trace_notification is not None:
            set_trace_all(agent, cfg.trace_notification)
        return {"TraceNotification": agent.datapath.trace_all}

    return r


def _filter_api(flt: Filter) -> dict[str, Any]:
    return {
        "types": sorted(flt.types),
        "related-to": flt.related_to,
        "from-identity": flt.from_identity,
        "to-identity": flt.to_identity,
    }
