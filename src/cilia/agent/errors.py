"""The error the agent answers API requests with."""

from __future__ import annotations

from cilia.runtime.owner import EndpointError


class AgentError(EndpointError):
    """A request the agent refuses; `status` is the HTTP status to answer with."""
