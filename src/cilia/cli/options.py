"""`cilia config` and `cilia endpoint config`: runtime options (TraceNotification)."""

from __future__ import annotations

import click

from cilia.cli.api import call


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


@click.command("config")
@click.argument("options", nargs=-1)
def node_config(options: tuple[str, ...]) -> None:
    """Show or change node-wide options: cilia config TraceNotification=true."""
    if options:
        res = call("PATCH", "/config/options", _options(options, ("TraceNotification",)))
    else:
        res = call("GET", "/config/options")
    click.echo(f"TraceNotification   {'Enabled' if res['TraceNotification'] else 'Disabled'}")
