"""The `cilia` command line. Every command except agent/up/down/exec talks only to the API.

Exit codes: 0 success; 1 the request failed (or a probe was denied); 2 usage
errors (click's own).

Each command's module is imported only when that command runs (LazyGroup): most
commands send one request, and importing all of them, or the agent's configuration
(pydantic), would take several times longer than the request.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from cilia.cli.node import select_node

COMMANDS = {
    "agent": "cilia.cli.lifecycle:agent",
    "apply": "cilia.cli.objects:apply",
    "bpf": "cilia.cli.bpf:bpf",
    "cluster": "cilia.cli.cluster:cluster",
    "cni": "cilia.cli.cni:cni",
    "completion": "cilia.cli.completion:completion",
    "config": "cilia.cli.options:node_config",
    "delete": "cilia.cli.objects:delete",
    "down": "cilia.cli.lifecycle:down",
    "endpoint": "cilia.cli.endpoint:endpoint",
    "exec": "cilia.cli.objects:exec",
    "get": "cilia.cli.objects:get",
    "identity": "cilia.cli.identity:identity",
    "kvstore": "cilia.cli.cluster:kvstore",
    "metrics": "cilia.cli.observe:metrics",
    "monitor": "cilia.cli.observe:monitor",
    "policy": "cilia.cli.policy:policy",
    "probe": "cilia.cli.probe:probe",
    "service": "cilia.cli.service:service",
    "status": "cilia.cli.status:status",
    "up": "cilia.cli.lifecycle:up",
}
"""Command name -> "module:attribute" of its click command."""


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, from `lazy` ("module:attr")."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, _, attr = self.lazy[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command), self.lazy[cmd_name]
        return command


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--node",
    envvar="CILIA_NODE",
    metavar="NAME",
    help="Talk to the agent of this node of the cluster on this machine (`cilia cluster`);"
    " default: its first node, unless CILIA_RUN_DIR is set.",
)
@click.pass_context
def main(ctx: click.Context, node: str | None) -> None:
    """Cilia: identity-based network security for containers, enforced in eBPF.

    Paths and names come from CILIA_* environment variables (CILIA_RUN_DIR,
    CILIA_STATE_DIR, CILIA_BPF_DIR, CILIA_NAME_PREFIX, CILIA_POD_CIDR).
    """
    select_node(node, ctx.invoked_subcommand)


if __name__ == "__main__":
    main()
