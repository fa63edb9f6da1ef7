"""`cilia cni install|uninstall`."""

from __future__ import annotations

from pathlib import Path

import click

from cilia.cli.output import emit, output_option
from cilia.defaults import socket_path


@click.group()
def cni() -> None:
    """Install the CNI plugin for container runtimes."""


@cni.command("install")
@click.option(
    "--conf-dir",
    type=click.Path(path_type=Path),
    default=Path("/etc/cni/net.d"),
    show_default=True,
    help="Where runtimes read network configurations.",
)
@click.option(
    "--bin-dir",
    type=click.Path(path_type=Path),
    default=Path("/opt/cni/bin"),
    show_default=True,
    help="Where runtimes look for plugins.",
)
@click.option("--network", default="cilia", show_default=True, help="Network name.")
@click.option(
    "--agent-socket",
    type=click.Path(path_type=Path),
    help="The agent's API socket (default: this agent's).",
)
@output_option()
def install(
    conf_dir: Path, bin_dir: Path, network: str, agent_socket: Path | None, fmt: str
) -> None:
    """Write 00-cilia.conflist and put cilia-cni where the runtime looks."""
    from cilia.cni.install import install as do_install

    sock = agent_socket or Path(socket_path())
    try:
        written = do_install(conf_dir, bin_dir, network, sock)
    except OSError as exc:
        raise click.ClickException(f"cni install: {exc}") from None
    if not emit({"installed": [str(p) for p in written], "agent-socket": str(sock)}, fmt):
        for path in written:
            click.echo(f"installed {path}")


@cni.command("uninstall")
@click.option(
    "--conf-dir", type=click.Path(path_type=Path), default=Path("/etc/cni/net.d"), show_default=True
)
@click.option(
    "--bin-dir", type=click.Path(path_type=Path), default=Path("/opt/cni/bin"), show_default=True
)
@output_option()
def uninstall(conf_dir: Path, bin_dir: Path, fmt: str) -> None:
    """Remove the conflist and the plugin that `cilia cni install` wrote."""
    from cilia.cni.install import uninstall as do_uninstall

    removed = do_uninstall(conf_dir, bin_dir)
    if not emit({"removed": [str(p) for p in removed]}, fmt):
        for path in removed:
            click.echo(f"removed {path}")
        if not removed:
            click.echo("nothing to remove")
