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


KINDS = {
    "pods": "pods",
    "pod": "pods",
    "po": "pods",
    "namespaces": "namespaces",
    "namespace": "namespaces",
    "ns": "namespaces",
    "policies": "policies",
    "networkpolicies": "policies",
    "netpol": "policies",
    "cnp": "policies",
    "services": "services",
    "service": "services",
    "svc": "services",
    "nodes": "nodes",
    "node": "nodes",
    "no": "nodes",
}
"""Kind names and short names `get` accepts -> the listing they name."""


@click.command()
@click.argument("kind", type=click.Choice(list(KINDS)), metavar="KIND")
@click.argument("name", required=False)
@click.option("-n", "--namespace", help="This namespace (default: default).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace (overrides -n).")
@click.option(
    "-l",
    "--selector",
    metavar="SELECTOR",
    help="Label selector: k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k, !k (comma: and).",
)
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["table", "wide", "json", "yaml"]),
    default="table",
    show_default=True,
    help="Output format: json|yaml are Kubernetes objects (a List), as kubectl prints them.",
)
def get(
    kind: str,
    name: str | None,
    namespace: str | None,
    all_namespaces: bool,
    selector: str | None,
    fmt: str,
) -> None:
    """List pods, namespaces, policies (cnp, netpol), services or the cluster's nodes,
    as kubectl does: of the `default` namespace unless -n NS or -A; -o json|yaml prints
    a Kubernetes `List` (with NAME: the object itself). Cilia's own fields (endpoint id,
    identity, endpoint state) are under `status.cilia`."""
    canonical = KINDS[kind]
    params: dict[str, str] = {"format": "k8s"}
    if canonical in ("pods", "policies", "services") and not all_namespaces:
        params["namespace"] = namespace or "default"
    if selector:
        params["labelSelector"] = selector
    if name:
        params["name"] = name
    if canonical == "nodes":
        from cilia.cli.cluster import show_nodes

        show_nodes(name, fmt, selector)
        return
    listing = call("GET", f"/objects/{canonical}", **params)
    items: list[dict[str, Any]] = listing["items"]
    if name and not items:
        where = f" in namespace {params['namespace']}" if "namespace" in params else ""
        fail(f'{canonical} "{name}" not found{where}')
    if name and len(items) == 1 and emit(items[0], fmt):
        return
    if emit(listing, fmt):
        return
    _get_table(canonical, items, all_namespaces, wide=fmt == "wide")


def _labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items()) or "<none>"


def _get_table(kind: str, items: list[dict[str, Any]], all_namespaces: bool, wide: bool) -> None:
    """kubectl-style columns; NAMESPACE only with -A, -o wide adds Cilia's columns."""
    rows: list[list[Any]] = []
    headers: list[str]
    for item in items:
        meta, status = item["metadata"], item.get("status", {})
        row = [meta["namespace"]] if all_namespaces and kind != "namespaces" else []
        row.append(meta["name"])
        cilia = status.get("cilia", {})
        if kind == "pods":
            containers = status.get("containerStatuses", [])
            total = len(containers) or len(item["spec"].get("containers", []))
            ready = sum(bool(c["ready"]) for c in containers)
            restarts = sum(c["restartCount"] for c in containers)
            row += [f"{ready}/{total}", status["phase"], restarts, cilia["state"]]
            if wide:
                row += [
                    status.get("podIP", "<none>"),
                    item["spec"].get("nodeName") or "<none>",
                    cilia.get("identity", "<none>"),
                    cilia.get("endpointID", "<none>"),
                    _labels_text(meta["labels"]),
                ]
        elif kind == "namespaces":
            row += [status.get("phase", ""), _labels_text(meta["labels"])]
        elif kind == "services":
            spec = item["spec"]
            row += [spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>"]
            row.append(_ports_text(spec.get("ports", [])))
            row += [
                _labels_text(spec.get("selector") or {}),
                ",".join(cilia.get("backends", [])) or "<none>",
            ]
        else:
            row += [item["kind"], cilia.get("rules", "")]
        rows.append(row)
    if kind == "pods":
        headers = ["NAME", "READY", "STATUS", "RESTARTS", "STATE"]
        if wide:
            headers += ["IP", "NODE", "IDENTITY", "ENDPOINT", "LABELS"]
    elif kind == "namespaces":
        headers = ["NAME", "STATUS", "LABELS"]
    elif kind == "services":
        headers = ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "SELECTOR", "BACKENDS"]
    else:
        headers = ["NAME", "KIND", "RULES"]
    if all_namespaces and kind != "namespaces":
        headers.insert(0, "NAMESPACE")
    table(rows, headers)


def _ports_text(ports: list[dict[str, Any]]) -> str:
    """kubectl's PORT(S): `80/TCP`, `80:30080/TCP` with a node port."""
    out = [
        f"{p['port']}{':' + str(p['nodePort']) if p.get('nodePort') else ''}"
        f"/{p.get('protocol', 'TCP')}"
        for p in ports
    ]
    return ",".join(out) or "<none>"


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
