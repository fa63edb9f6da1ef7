"""`GET /v1/config/agent`: the agent's effective configuration and each value's source."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from cilia.agent.config import AgentConfig


def config_router(config: Callable[[], AgentConfig]) -> APIRouter:
    r = APIRouter()

    @r.get("/v1/config/agent")
    def agent_config() -> dict[str, dict[str, Any]]:
        """Setting (flag name) -> {"value", "source": default | file PATH | env CILIA_X |
        flag --x}."""
        return config().effective()

    return r
