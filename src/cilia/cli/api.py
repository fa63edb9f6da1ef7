"""The CLI's way to the agent: one API call, errors turned into a clean exit."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from cilia.cli.client import ApiError, Client
from cilia.defaults import socket_path


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error to stderr and exit."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def client() -> Client:
    """A client of the agent this command talks to (CILIA_RUN_DIR, or --node's)."""
    return Client(socket_path())


def call(method: str, path: str, body: Any = None, **params: Any) -> Any:
    """API call that turns errors into a clean exit."""
    try:
        return client().request(method, path, json=body, params=params or None)
    except ApiError as exc:
        fail(str(exc))


def resolve_endpoint(key: str) -> int:
    """The id of an endpoint given by id, NS/POD or IPv4."""
    if key.isdigit():
        return int(key)
    return int(call("GET", f"/endpoint/{key}")["id"])
