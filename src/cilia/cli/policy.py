"""`cilia policy import|validate|get|delete|trace`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cilia.cli.api import call, fail
from cilia.cli.output import emit, output_option


@click.group()
def policy() -> None:
    """Manage the policy repository."""


def _rules_file(path: str) -> dict[str, str]:
    """The request body carrying a rules file: its text, decoded as strict UTF-8 here and
    parsed by the agent (strict JSON/YAML, limits), so this command imports no YAML."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}")
    source = "<stdin>" if path == "-" else path
    try:
        return {"text": data.decode("utf-8"), "source": source}
    except UnicodeDecodeError as exc:
        fail(f"{source}: not valid UTF-8 (byte {exc.start})")


@policy.command("import")
@click.argument("path")
def policy_import(path: str) -> None:
    """Import rules from a JSON or YAML list; returns once they are enforced."""
    res = call("PUT", "/policy", _rules_file(path))
    click.echo(f"Revision: {res['revision']}")


@policy.command("validate")
@click.argument("path")
def policy_validate(path: str) -> None:
    """Check rules without applying them."""
    res = call("POST", "/policy/validate", _rules_file(path))
    click.echo(f"All policy elements are valid ({res['rules']} rules).")


@policy.command("get")
@output_option("json")
def policy_get(fmt: str) -> None:
    """Print the repository's rules and revision."""
    data = call("GET", "/policy")
    if fmt == "table":
        fmt = "json"
    emit(data, fmt)


@policy.command("delete")
@click.option("--all", "delete_all", is_flag=True, help="Delete every rule.")
@click.argument("labels", nargs=-1)
def policy_delete(delete_all: bool, labels: tuple[str, ...]) -> None:
    """Delete every rule carrying all LABELS (or --all)."""
    if not delete_all and not labels:
        raise click.UsageError("give LABELS or --all")
    res = call("DELETE", "/policy", {"all": delete_all, "labels": list(labels)})
    click.echo(f"Deleted {res['deleted']} rules. Revision: {res['revision']}")


@click.command("trace")
@click.option("-s", "--src", "src_labels", multiple=True, help="Source label (repeatable).")
@click.option("-d", "--dst", "dst_labels", multiple=True, help="Destination label.")
@click.option("--src-identity", type=int, help="Source security identity.")
@click.option("--dst-identity", type=int, help="Destination security identity.")
@click.option("--src-endpoint", help="Source endpoint (id, NS/POD or IPv4).")
@click.option("--dst-endpoint", help="Destination endpoint (id, NS/POD or IPv4).")
@click.option("--src-k8s-pod", "src_pod", help="Source pod NS:NAME.")
@click.option("--dst-k8s-pod", "dst_pod", help="Destination pod NS:NAME.")
@click.option(
    "--dst-service",
    help="Destination service NS/NAME: every backend of its port --dport (after translation).",
)
@click.option("--dport", help="Destination port PORT[/PROTO] (TCP by default); none: L3.")
@click.option("-v", "--verbose", is_flag=True, help="Also list rules that select nothing.")
@output_option()
def trace(fmt: str, **options: Any) -> None:
    """Explain whether SOURCE may reach DESTINATION, ending with the final verdict.

    Exit code 0 when ALLOWED, 1 when DENIED.
    """
    body = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
    res = call("POST", "/policy/resolve", body)
    if not emit(res, fmt):
        click.echo(res["trace"])
    sys.exit(0 if res["verdict"] == "ALLOWED" else 1)


policy.add_command(trace)
