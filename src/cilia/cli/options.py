"""`cilia config` and `cilia endpoint config`: runtime options (TraceNotification), and
`cilia config --agent`: the agent's effective configuration and where each value came from."""

from __future__ import annotations

import json
from typing import Any

import click

from cilia.cli.api import call
from cilia.cli.output import emit, output_option, table


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "enabled", "enable", "on", "1", "yes"):
        return True
    if v in ("false", "disabled", "disable", "off", "0", "no"):
        return False
    raise click.BadParameter(f"{value!r} is not true or false")


def _options(pairs: tuple[str, ...], known: tuple[str, ...]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            names = " or ".join(f"{k}=true|false" for k in known)
            raise click.BadParameter(f"{pair!r}: use {names}")
        out[key] = _bool(value)
    return out


@click.command("config")
@click.argument("key")
@click.argument("options", nargs=-1)
def endpoint_config(key: str, options: tuple[str, ...]) -> None:
    """Show or change an endpoint's options: cilia endpoint config ID TraceNotification=true."""
    if options:
        res = call("PATCH", f"/endpoint/{key}/config", _options(options, ("TraceNotification",)))
    else:
        res = call("GET", f"/endpoint/{key}/config")
    click.echo(f"TraceNotification   {'Enabled' if res['TraceNotification'] else 'Disabled'}")


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@click.command("config")
@click.argument("options", nargs=-1)
@click.option(
    "--agent",
    "agent_config",
    is_flag=True,
    help="Show the agent's effective configuration: each setting, its value and its source"
    " (default, file PATH, env CILIA_X, flag --x).",
)
@output_option()
def node_config(options: tuple[str, ...], agent_config: bool, fmt: str) -> None:
    """Show or change node-wide options: cilia config TraceNotification=true.

    With --agent, show the agent's settings and where each came from instead.
    """
    if agent_config:
        if options:
            raise click.UsageError("--agent shows the configuration; it takes no OPTIONS")
        settings = call("GET", "/config/agent")
        if not emit(settings, fmt):
            rows = [(k, _shown(s["value"]), s["source"]) for k, s in settings.items()]
            table(rows, ("KEY", "VALUE", "SOURCE"))
        return
    if options:
        res = call("PATCH", "/config/options", _options(options, ("TraceNotification",)))
    else:
        res = call("GET", "/config/options")
    if not emit(res, fmt):
        click.echo(f"TraceNotification   {'Enabled' if res['TraceNotification'] else 'Disabled'}")
