"""`cilia completion bash|zsh`: the shell completion script (click's own)."""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script of SHELL for the `cilia` command.

    Load it in the current shell with eval "$(cilia completion bash)" (zsh: "$(cilia
    completion zsh)"), or add that line to ~/.bashrc or ~/.zshrc.
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None, shell  # click knows every shell of SHELLS
    click.echo(cls(ctx.find_root().command, {}, "cilia", "_CILIA_COMPLETE").source())
