"""The error the agent answers API requests with."""

from __future__ import annotations


class AgentError(Exception):
    """A request the agent refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
