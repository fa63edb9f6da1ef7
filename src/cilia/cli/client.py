"""HTTP client of the agent's unix-socket API (the CLI's only way to the agent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx


class ApiError(Exception):
    """The agent refused a request or could not be reached."""


class Client:
    """Thin wrapper over httpx speaking to /v1 on the agent's socket."""

    def __init__(self, socket_path: Path, timeout: float = 120.0) -> None:
        self.socket_path = socket_path
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)),
            base_url="http://cilia/v1",
            timeout=timeout,
        )

    def request(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        """Send a request; return the decoded JSON or raise ApiError with the agent's message."""
        try:
            resp = self._http.request(method, path, json=json, params=params)
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise ApiError(
                f"cannot reach the agent at {self.socket_path}: is it running? (start it with "
                f"'cilia up') [{exc}]"
            ) from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
                message = body.get("error") or body.get("detail") or resp.text
            except ValueError:
                message = resp.text
            if isinstance(message, list):  # FastAPI request-validation errors
                message = "; ".join(
                    f"{'.'.join(str(p) for p in m.get('loc', [])[1:])}: {m.get('msg')}"
                    for m in message
                )
            raise ApiError(str(message))
        return resp.json()

    def get(self, path: str, **params: Any) -> Any:
        """GET path."""
        return self.request("GET", path, params=params or None)

    def healthy(self) -> bool:
        """Does the agent answer /healthz?"""
        try:
            return bool(self.get("/healthz").get("status") == "ok")
        except ApiError:
            return False
