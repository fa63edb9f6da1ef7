"""`cilia apply|delete|get|exec`: Kubernetes-style objects and pods."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cilia.cli.api import call, fail
from cilia.cli.output import emit, output_option, table


def _decode(source: str, data: bytes) -> tuple[str, str]:
    try:
        return source, data.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"{source}: not valid UTF-8 (byte {exc.start})")


def _read_inputs(paths: tuple[str, ...]) -> list[tuple[str, str]]:
    """(source name, text) for each -f argument: a file, a directory, or '-'.

    Files are read as bytes and decoded as strict UTF-8 here; everything else (YAML,
    limits, validation) is the agent's business, so the command stays light."""
    out: list[tuple[str, str]] = []
    for p in paths:
        if p == "-":
            out.append(_decode("<stdin>", sys.stdin.buffer.read()))
            continue
        path = Path(p)
        try:
            if path.is_dir():
                files = sorted(f for f in path.iterdir() if f.suffix in (".yaml", ".yml", ".json"))
                out.extend(_decode(str(f), f.read_bytes()) for f in files)
            elif path.exists():
                out.append(_decode(str(path), path.read_bytes()))
            else:
                fail(f"{p}: no such file or directory")
        except OSError as exc:
            fail(f"{p}: {exc.strerror or exc}")
    return out


def _objects(action: str, paths: tuple[str, ...], fmt: str) -> None:
    # One request: the agent validates every file before anything changes (nothing
    # half-applied, and no objects at all is an error, as in kubectl).
    files = [{"text": text, "source": source} for source, text in _read_inputs(paths)]
    results: list[dict[str, Any]] = call("POST", f"/objects/{action}", {"files": files})["results"]
    if emit(results, fmt):
        return
    for r in results:
        click.echo(f"{r['object']} {r['action']}")


@click.command()
@click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    required=True,
    help="File, directory or '-' for standard input (repeatable).",
)
@output_option()
def apply(paths: tuple[str, ...], fmt: str) -> None:
    """Create or update Namespaces, Pods, NetworkPolicies and CiliumNetworkPolicies."""
    _objects("apply", paths, fmt)


@click.group(invoke_without_command=True)
@click.option("-f", "--filename", "paths", multiple=True, help="Delete what these files define.")
@output_option()
@click.pass_context
def delete(ctx: click.Context, paths: tuple[str, ...], fmt: str) -> None:
    """Delete objects defined in files, or one pod (`cilia delete pod NS/NAME`)."""
    if ctx.invoked_subcommand is None:
        if not paths:
            raise click.UsageError("give -f FILE or a subcommand (pod NS/NAME)")
        _objects("delete", paths, fmt)


def _split(ref: str) -> tuple[str, str]:
    return (ref.split("/", 1)[0], ref.split("/", 1)[1]) if "/" in ref else ("default", ref)


@delete.command("pod")
@click.argument("ref")
def delete_pod(ref: str) -> None:
    """Delete one pod (NS/NAME)."""
    ns, name = _split(ref)
    call("DELETE", f"/pods/{ns}/{name}")
    click.echo(f"pod {ns}/{name} deleted")


@click.command()
@click.argument(
    "kind",
    type=click.Choice(
        [
            "pods",
            "namespaces",
            "policies",
            "services",
            "pod",
            "ns",
            "networkpolicies",
            "cnp",
            "netpol",
            "svc",
            "nodes",
            "node",
            "no",
        ]
    ),
)
@click.argument("name", required=False)
@click.option("-n", "--namespace", help="Only this namespace.")
@output_option()
def get(kind: str, name: str | None, namespace: str | None, fmt: str) -> None:
    """List pods, namespaces, policies, services or the cluster's nodes; with NAME,
    -o json|yaml prints the object itself (a CiliumNetworkPolicy with its per-node status)."""
    canonical = {
        "pod": "pods",
        "ns": "namespaces",
        "networkpolicies": "policies",
        "cnp": "policies",
        "netpol": "policies",
        "svc": "services",
        "node": "nodes",
        "no": "nodes",
    }.get(kind, kind)
    if canonical == "nodes":
        from cilia.cli.cluster import show_nodes

        show_nodes(name, fmt)
        return
    items = call("GET", f"/objects/{canonical}")
    if namespace:
        items = [i for i in items if i.get("namespace") == namespace]
    if name:
        items = [i for i in items if i["name"] == name]
        if not items:
            fail(f"{kind} {name} not found")
        if len(items) == 1 and emit(items[0]["object"], fmt):
            return
    if emit(items, fmt):
        return
    if canonical == "pods":
        table(
            [
                (
                    i["namespace"],
                    i["name"],
                    i.get("node", ""),
                    i.get("ipv4", ""),
                    i.get("identity", ""),
                    i.get("state", ""),
                    ",".join(f"{k}={v}" for k, v in i["labels"].items()),
                )
                for i in items
            ],
            ["NAMESPACE", "NAME", "NODE", "IPV4", "IDENTITY", "STATE", "LABELS"],
        )
    elif canonical == "namespaces":
        table(
            [(i["name"], ",".join(f"{k}={v}" for k, v in i["labels"].items())) for i in items],
            ["NAME", "LABELS"],
        )
    elif canonical == "services":
        table(
            [
                (
                    i["namespace"],
                    i["name"],
                    ",".join(f"{k}={v}" for k, v in (i["selector"] or {}).items()) or "<none>",
                    ",".join(i["backends"]),
                )
                for i in items
            ],
            ["NAMESPACE", "NAME", "SELECTOR", "BACKENDS"],
        )
    else:
        table(
            [(i["namespace"], i["name"], i["kind"], i.get("rules", "")) for i in items],
            ["NAMESPACE", "NAME", "KIND", "RULES"],
        )


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("ref")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec(ref: str, argv: tuple[str, ...]) -> None:
    """Run a command inside a pod's network namespace: cilia exec NS/POD -- CMD..."""
    import subprocess

    from cilia.datapath.netns import setns

    ns, name = _split(ref)
    path = call("GET", f"/pods/{ns}/{name}/netns")["netns"]
    with setns(path):  # the child inherits this thread's namespace, and our terminal
        proc = subprocess.Popen(list(argv))
    sys.exit(proc.wait())
