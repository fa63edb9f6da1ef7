"""The `cilia` command line. Every command except agent/up/down/exec talks only to the API.

Exit codes: 0 success; 1 the request failed (or a probe was denied); 2 usage
errors (click's own).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click
import yaml

from cilia.agent.config import AgentConfig
from cilia.cli.client import ApiError, Client
from cilia.cli.cluster import register as register_cluster
from cilia.cli.cluster import select_node, show_nodes
from cilia.cli.cni import cni
from cilia.cli.matrix import show_matrix
from cilia.cli.observe import register as register_observe
from cilia.cli.observe import status_lines
from cilia.cli.output import F, emit, output_option, table
from cilia.cli.policy_trace import make_labels_command, make_trace_command


def _config() -> AgentConfig:
    return AgentConfig()


def _client() -> Client:
    return Client(_config().socket_path)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error to stderr and exit."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def call(method: str, path: str, body: Any = None, **params: Any) -> Any:
    """API call that turns errors into a clean exit."""
    try:
        return _client().request(method, path, json=body, params=params or None)
    except ApiError as exc:
        fail(str(exc))


def _read_inputs(paths: tuple[str, ...]) -> list[tuple[str, str]]:
    """(source name, text) for each -f argument: a file, a directory, or '-'."""
    out: list[tuple[str, str]] = []
    for p in paths:
        if p == "-":
            out.append(("<stdin>", sys.stdin.read()))
            continue
        path = Path(p)
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix in (".yaml", ".yml", ".json"))
            out.extend((str(f), f.read_text()) for f in files)
        elif path.exists():
            out.append((str(path), path.read_text()))
        else:
            fail(f"{p}: no such file or directory")
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


# -- agent life cycle ---------------------------------------------------------


_AGENT_FLAGS = {
    # flag -> AgentConfig field; each may also come from CILIA_<FIELD>.
    "--pod-cidr": "pod_cidr",
    "--prometheus-serve-addr": "prometheus_serve_addr",
    "--legacy-host-allows-world": "legacy_host_allows_world",
    "--allow-localhost": "allow_localhost",
    "--kvstore": "kvstore",
    "--node-name": "node_name",
    "--underlay-device": "underlay_device",
    "--cluster-pod-cidr": "cluster_pod_cidr",
    "--lease-ttl": "lease_ttl",
    "--lease-keepalive": "lease_keepalive",
    "--identity-gc-interval": "identity_gc_interval",
    "--mtu": "mtu",
    "--docker-plugin-name": "docker_plugin_name",
}


def agent_options(fn: F) -> F:
    """Options shared by `agent` and `up` (which hands them to the agent it starts)."""
    fn = click.option("--pod-cidr", help="IPv4 range of local pods (default 10.200.0.0/16).")(fn)
    fn = click.option(
        "--prometheus-serve-addr",
        help="Serve Prometheus metrics on HOST:PORT (off unless given).",
    )(fn)
    fn = click.option(
        "--legacy-host-allows-world",
        type=click.Choice(["true", "false"]),
        help="Policies allowing host also allow world (the 1.0 behaviour).",
    )(fn)
    fn = click.option(
        "--allow-localhost",
        type=click.Choice(["policy", "always"]),
        help="'always': the node reaches every local pod whatever the policy (like"
        " Cilium's --allow-localhost=always, for kubelet-style health checks); default policy.",
    )(fn)
    fn = click.option(
        "--kvstore",
        type=click.Choice(["etcd"]),
        help="Cluster mode: share identities, nodes, ipcache and objects through etcd.",
    )(fn)
    fn = click.option(
        "--kvstore-opt",
        multiple=True,
        metavar="KEY=VALUE",
        help="kvstore option (repeatable): etcd.address=URL[,URL...].",
    )(fn)
    fn = click.option("--node-name", help="This node's name in the cluster (default: hostname).")(
        fn
    )
    fn = click.option(
        "--underlay-device", help="Device whose IPv4 address is this node's tunnel endpoint."
    )(fn)
    fn = click.option(
        "--cluster-pod-cidr", help="Range the nodes' pod ranges are carved from (cluster mode)."
    )(fn)
    fn = click.option("--lease-ttl", help="Seconds the node's etcd lease lives (default 900).")(fn)
    fn = click.option("--lease-keepalive", help="Seconds between lease refreshes (default 300).")(
        fn
    )
    fn = click.option(
        "--identity-gc-interval", help="Seconds between unused-identity collections (default 600)."
    )(fn)
    fn = click.option("--mtu", help="MTU of pod devices (default 1500).")(fn)
    fn = click.option(
        "--container-runtime",
        multiple=True,
        help="Runtimes to watch for labels (repeatable or comma list): auto (default:"
        " docker, containerd and cri-o at their default sockets, those that answer),"
        " containerd, docker, crio, none.",
    )(fn)
    fn = click.option(
        "--container-runtime-endpoint",
        multiple=True,
        metavar="RUNTIME=PATH",
        help="Socket of a runtime (repeatable), e.g. containerd=/run/containerd/containerd.sock.",
    )(fn)
    fn = click.option(
        "--docker-plugin-name", help="Name of the Docker network/IPAM driver (default cilia)."
    )(fn)
    return fn


def _overrides(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        field: v for field in _AGENT_FLAGS.values() if (v := values.get(field)) is not None
    }
    if values.get("kvstore_opt"):
        out["kvstore_opt"] = _key_values(values["kvstore_opt"], "--kvstore-opt")
    if values.get("container_runtime"):
        out["container_runtime"] = list(values["container_runtime"])
    if values.get("container_runtime_endpoint"):
        pairs = values["container_runtime_endpoint"]
        out["container_runtime_endpoint"] = _key_values(pairs, "--container-runtime-endpoint")
    return out


def _key_values(pairs: tuple[str, ...], option: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for pair in pairs:
        for item in pair.split(",") if option == "--container-runtime-endpoint" else [pair]:
            key, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=option)
            opts[key.strip()] = value.strip()
    return opts


@main.command()
@agent_options
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def agent(log_level: str, **flags: Any) -> None:
    """Run the agent in the foreground."""
    from cilia.agent.server import run_agent

    try:
        config = AgentConfig(**_overrides(flags))
    except ValueError as exc:
        fail(f"invalid agent configuration: {exc}")
    run_agent(config, log_level)


@main.command()
@agent_options
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for health.")
def up(timeout: float, **flags: Any) -> None:
    """Start the agent in the background and wait until it is healthy."""
    from cilia.agent.cleanup import read_pid

    cfg = _config()
    client = Client(cfg.socket_path)
    if read_pid(cfg) is not None and client.healthy():
        click.echo(f"agent already running (pid {read_pid(cfg)}, socket {cfg.socket_path})")
        return
    cfg.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = [sys.executable, "-m", "cilia.cli.main", "agent"]
    for flag, field in _AGENT_FLAGS.items():
        if flags.get(field) is not None:
            argv += [flag, str(flags[field])]
    for option in ("kvstore_opt", "container_runtime", "container_runtime_endpoint"):
        for value in flags.get(option) or ():
            argv += ["--" + option.replace("_", "-"), value]
    with open(cfg.log_file, "ab") as logf:
        proc = subprocess.Popen(
            argv,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    cfg.pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"agent exited with code {proc.returncode}; see {cfg.log_file}")
        if client.healthy():
            click.echo(
                f"agent running (pid {proc.pid}, socket {cfg.socket_path}, log {cfg.log_file})"
            )
            return
        time.sleep(0.1)
    fail(f"agent not healthy after {timeout:.0f}s; see {cfg.log_file}")


@main.command()
def down() -> None:
    """Stop the agent and remove every pod, device, route, pin and state file Cilia made."""
    from cilia.agent.cleanup import remove_everything, stop_agent

    cfg = _config()
    if stop_agent(cfg):
        click.echo("agent stopped")
    for line in remove_everything(cfg):
        click.echo(f"removed {line}")
    click.echo("clean")


@main.command()
@output_option()
@click.option("--all-controllers", is_flag=True, help="List every controller.")
@click.option("--all-redirects", is_flag=True, help="List every L7 proxy redirect.")
@click.option("--verbose", is_flag=True, help="Same as --all-controllers --all-redirects.")
def status(fmt: str, all_controllers: bool, all_redirects: bool, verbose: bool) -> None:
    """Agent health, datapath, endpoints, identities and policy revision."""
    data = call(
        "GET",
        "/status",
        all_controllers=all_controllers or verbose,
        all_redirects=all_redirects or verbose,
    )
    if emit(data, fmt):
        return
    dp = data["datapath"]
    click.echo(f"Cilia:              {data['cilia']}")
    click.echo(f"Node:               {data['node']}")
    click.echo(
        f"Datapath:           {dp['mode']}, programs on {dp['programs-attached']} "
        f"devices (+ proxy device {dp['proxy-device'] or 'missing'}), pins in {dp['pin-dir']}"
    )
    click.echo(f"Endpoints:          {data['endpoints-ready']}/{data['endpoints']} ready")
    click.echo(f"Identities:         {data['identities']}")
    click.echo(
        f"Policy:             revision {data['policy-revision']} "
        f"(enforced {data['realized-revision']}), {data['policy-rules']} rules"
    )
    click.echo(f"Pod CIDR:           {data['pod-cidr']}")
    ctl = data["controllers"]
    click.echo(f"Controllers:        {ctl['total'] - ctl['failing']}/{ctl['total']} healthy")
    for line in status_lines(data):
        click.echo(line)
    proxy = data["proxy"]
    click.echo(
        f"Proxy:              {proxy['redirects']} redirects, "
        f"{proxy['envoy-restarts']} Envoy restarts"
    )
    if "redirect-list" in data:
        table(
            [
                (r["endpoint_id"], r["direction"], r["port"], r["proxy_port"], r["parser"])
                for r in data["redirect-list"]
            ],
            ["ENDPOINT", "DIRECTION", "PORT", "PROXY-PORT", "PARSER"],
        )


# -- objects ------------------------------------------------------------------


def _objects(action: str, paths: tuple[str, ...], fmt: str) -> None:
    inputs = _read_inputs(paths)
    # Validate every file before applying any of them: nothing half-applied.
    for source, text in inputs:
        call("POST", "/objects/validate", {"text": text, "source": source})
    results: list[dict[str, Any]] = []
    for source, text in inputs:
        results += call("POST", f"/objects/{action}", {"text": text, "source": source})["results"]
    if emit(results, fmt):
        return
    for r in results:
        click.echo(f"{r['object']} {r['action']}")


@main.command()
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


@main.group(invoke_without_command=True)
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


@main.command()
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


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("ref")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec(ref: str, argv: tuple[str, ...]) -> None:
    """Run a command inside a pod's network namespace: cilia exec NS/POD -- CMD..."""
    from cilia.datapath.netns import setns

    ns, name = _split(ref)
    path = call("GET", f"/pods/{ns}/{name}/netns")["netns"]
    with setns(path):  # the child inherits this thread's namespace, and our terminal
        proc = subprocess.Popen(list(argv))
    sys.exit(proc.wait())


# -- probes -------------------------------------------------------------------


@main.command()
@click.argument("source", required=False)
@click.argument("destination", required=False)
@click.option("--port", type=click.IntRange(1, 65535), default=80, show_default=True)
@click.option(
    "--protocol",
    type=click.Choice(["TCP", "UDP"], case_sensitive=False),
    default="TCP",
    show_default=True,
)
@click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds per probe.")
@click.option(
    "--matrix", is_flag=True, help="Probe every pair of pods (of every node of a cluster)."
)
@click.option("--ports", default="80", show_default=True, help="Matrix ports, comma separated.")
@click.option("--protocols", default="TCP", show_default=True, help="Matrix protocols.")
@click.option("--namespaces", default="", help="Matrix: only pods of these namespaces.")
@output_option()
def probe(
    source: str | None,
    destination: str | None,
    port: int,
    protocol: str,
    timeout: float,
    matrix: bool,
    ports: str,
    protocols: str,
    namespaces: str,
    fmt: str,
) -> None:
    """Check whether SOURCE can reach DESTINATION (exit 0 allowed, 1 denied).

    With --matrix, probe every ordered pair of pods and print a truth table
    ('.' allowed, 'X' denied); in a cluster on this machine every node's agent
    probes from its pods and the tables are merged.
    """
    if matrix:
        _matrix(ports, protocols, namespaces, timeout, fmt)
        return
    if not source or not destination:
        raise click.UsageError("give SOURCE and DESTINATION pods (NS/NAME), or --matrix")
    res = call(
        "POST",
        "/probe",
        {
            "source": source,
            "destination": destination,
            "port": port,
            "protocol": protocol.upper(),
            "timeout": timeout,
        },
    )
    if not emit(res, fmt):
        click.echo(res["result"])
    sys.exit(0 if res["result"] == "allowed" else 1)


def _matrix(ports: str, protocols: str, namespaces: str, timeout: float, fmt: str) -> None:
    try:
        port_list = [int(p) for p in ports.split(",") if p]
    except ValueError:
        raise click.BadParameter(
            f"{ports!r} is not a comma-separated list of ports", param_hint="--ports"
        ) from None
    proto_list = [p.strip().upper() for p in protocols.split(",") if p]
    body = {
        "ports": port_list,
        "protocols": proto_list,
        "namespaces": [n for n in namespaces.split(",") if n],
        "timeout": timeout,
    }
    show_matrix(body, fmt, call)


# -- endpoints, identities, policy ------------------------------------------


@main.group()
def endpoint() -> None:
    """Inspect endpoints."""


@endpoint.command("list")
@output_option()
def endpoint_list(fmt: str) -> None:
    """List endpoints."""
    eps = call("GET", "/endpoint")
    if emit(eps, fmt):
        return
    table(
        [
            (
                e["id"],
                "Enabled" if e["ingress-enforcement"] else "Disabled",
                "Enabled" if e["egress-enforcement"] else "Disabled",
                e["identity"],
                e["pod"],
                e["ipv4"],
                e["state"],
            )
            for e in eps
        ],
        [
            "ENDPOINT",
            "INGRESS-ENFORCEMENT",
            "EGRESS-ENFORCEMENT",
            "IDENTITY",
            "POD",
            "IPV4",
            "STATUS",
        ],
    )


@endpoint.command("get")
@click.argument("key")
@output_option("json")
def endpoint_get(key: str, fmt: str) -> None:
    """Show one endpoint (by id, NS/POD or IPv4)."""
    emit(call("GET", f"/endpoint/{key}"), "json" if fmt == "table" else fmt)


@endpoint.command("regenerate")
@click.argument("key")
def endpoint_regenerate(key: str) -> None:
    """Re-attach and reprogram one endpoint (by id, NS/POD or IPv4)."""
    ep = call("POST", f"/endpoint/{key}/regenerate")
    click.echo(f"Endpoint {ep['id']} regenerated (policy revision {ep['policy-revision']})")


@endpoint.command("log")
@click.argument("key")
@output_option()
def endpoint_log(key: str, fmt: str) -> None:
    """Recent state changes of an endpoint."""
    entries = call("GET", f"/endpoint/{key}/log")
    if emit(entries, fmt):
        return
    table(
        [
            (time.strftime("%H:%M:%S", time.localtime(e["time"])), e["state"], e["message"])
            for e in entries
        ],
        ["TIME", "STATE", "MESSAGE"],
    )


@main.group()
def identity() -> None:
    """Inspect security identities."""


@identity.command("list")
@output_option()
def identity_list(fmt: str) -> None:
    """List identities."""
    ids = call("GET", "/identity")
    if emit(ids, fmt):
        return
    table([(i["id"], ", ".join(i["labels"])) for i in ids], ["ID", "LABELS"])


@identity.command("get")
@click.argument("ident", type=int)
@output_option()
def identity_get(ident: int, fmt: str) -> None:
    """Show one identity."""
    data = call("GET", f"/identity/{ident}")
    if not emit(data, fmt):
        table([(data["id"], ", ".join(data["labels"]))], ["ID", "LABELS"])


@main.group()
def policy() -> None:
    """Manage the policy repository."""


def _load_rules(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        return yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        fail(f"{path}: not valid JSON or YAML: {exc}")


@policy.command("import")
@click.argument("path")
def policy_import(path: str) -> None:
    """Import rules from a JSON or YAML list; returns once they are enforced."""
    res = call("PUT", "/policy", {"rules": _load_rules(path)})
    click.echo(f"Revision: {res['revision']}")


@policy.command("validate")
@click.argument("path")
def policy_validate(path: str) -> None:
    """Check rules without applying them."""
    res = call("POST", "/policy/validate", {"rules": _load_rules(path)})
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


# -- bpf ----------------------------------------------------------------------


@main.group()
def bpf() -> None:
    """Inspect the datapath's maps."""


@bpf.group("policy")
def bpf_policy() -> None:
    """The policy map: what the kernel enforces per endpoint."""


@bpf_policy.command("get")
@click.argument("endpoint_id", required=False, type=int)
@output_option()
def bpf_policy_get(endpoint_id: int | None, fmt: str) -> None:
    """Entries of the policy map (all endpoints, or one). Protocol 255 rows are L4 markers."""
    params = {"endpoint": endpoint_id} if endpoint_id is not None else {}
    rows = call("GET", "/bpf/policy", **params)
    if emit(rows, fmt):
        return
    names = {0: "ANY", 1: "ICMP", 6: "TCP", 17: "UDP", 255: "(L4 marker)"}
    table(
        [
            (
                r["endpoint"],
                r["direction"],
                r["identity"] or "any",
                r["port"] or "all",
                names.get(r["protocol"], r["protocol"]),
            )
            for r in rows
        ],
        ["ENDPOINT", "DIRECTION", "IDENTITY", "PORT", "PROTOCOL"],
    )


@bpf.group("metrics")
def bpf_metrics() -> None:
    """Datapath counters."""


@bpf_metrics.command("list")
@output_option()
def bpf_metrics_list(fmt: str) -> None:
    """Forward and drop counters by reason and direction (from per-CPU maps)."""
    rows = call("GET", "/bpf/metrics")
    if emit(rows, fmt):
        return
    table(
        [(r["reason"], r["direction"], r["packets"], r["bytes"]) for r in rows],
        ["REASON", "DIRECTION", "PACKETS", "BYTES"],
    )


policy.add_command(make_trace_command(call))
endpoint.add_command(make_labels_command(call))
register_observe(main, call, fail)
register_cluster(main, call)
main.add_command(cni)

if __name__ == "__main__":
    main()
