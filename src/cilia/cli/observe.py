"""Observability commands: monitor, metrics list, bpf ct list|flush, bpf tunnel list,
bpf ipcache list, endpoint config, config."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import click
import httpx

from cilia.agent.config import AgentConfig
from cilia.cli.output import emit, output_option, table

EVENT_TYPES = ("drop", "trace", "l7", "agent")


_call: Callable[..., Any] | None = None
_fail_fn: Callable[[str], NoReturn] | None = None


def _fail(message: str) -> NoReturn:
    assert _fail_fn is not None, "register() not called"
    _fail_fn(message)


def _api(method: str, path: str, body: Any = None, **params: Any) -> Any:
    assert _call is not None, "register() not called"
    return _call(method, path, body, **params)


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


# -- monitor --------------------------------------------------------------------


def _ids(ev: dict[str, Any]) -> str:
    return f"identity {ev.get('src-identity')}->{ev.get('dst-identity')}"


def _endpoint(ev: dict[str, Any]) -> str:
    pod = f" ({ev['pod']})" if ev.get("pod") else ""
    return f"endpoint {ev.get('endpoint')}{pod}"


def format_event(ev: dict[str, Any], verbose: bool = False) -> str:
    """One human line per event, in the reference's style."""
    kind = ev.get("type")
    if kind == "drop":
        line = (
            f"xx drop ({ev['reason-name']}) {ev['direction']} {_endpoint(ev)}, "
            f"{_ids(ev)}: {ev['summary']}"
        )
    elif kind == "trace":
        arrow = "->" if ev["direction"] == "ingress" else "<-"
        line = f"{arrow} {_endpoint(ev)} {ev['direction']} forwarded, {_ids(ev)}: {ev['summary']}"
    elif kind == "agent":
        line = f">> Agent event {ev.get('subtype')}: {ev.get('message')}"
    elif kind == "l7":
        detail = ev.get("summary") or json.dumps(
            {k: v for k, v in ev.items() if k not in ("type", "time")}
        )
        line = f"<> L7 {_endpoint(ev)}, {_ids(ev)}: {detail}"
    elif kind == "lost":
        where = "ring buffer" if ev["source"] == "datapath" else "monitor queue"
        line = f"!! Lost {ev['count']} events (full {where})"
    else:
        line = json.dumps(ev)
    if verbose:
        stamp = time.strftime("%H:%M:%S", time.localtime(ev.get("time", time.time())))
        extra = f" ifindex {ev['ifindex']} code {ev.get('reason', 0)}" if "ifindex" in ev else ""
        line = f"{stamp}.{int(ev.get('time', 0) * 1000) % 1000:03d} {line}{extra}"
    return line


def _resolve_endpoint(key: str) -> int:
    if key.isdigit():
        return int(key)
    return int(_api("GET", f"/endpoint/{key}")["id"])


@click.command()
@click.option(
    "-t",
    "--type",
    "types",
    multiple=True,
    type=click.Choice(EVENT_TYPES),
    help="Event types to show (repeatable; default all).",
)
@click.option("-v", "--verbose", is_flag=True, help="Time stamps and more detail.")
@click.option(
    "-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option("--related-to", help="Only events of this endpoint (id, NS/POD or IPv4).")
@click.option("--from", "from_identity", type=int, help="Only events from this identity.")
@click.option("--to", "to_identity", type=int, help="Only events to this identity.")
@click.option("--count", type=int, default=0, help="Exit after this many events (0: never).")
@click.option("--timeout", type=float, default=0.0, help="Exit after this many seconds.")
def monitor(
    types: tuple[str, ...],
    verbose: bool,
    fmt: str,
    related_to: str | None,
    from_identity: int | None,
    to_identity: int | None,
    count: int,
    timeout: float,
) -> None:
    """Print datapath drops and traces, agent events and L7 events as they happen."""
    params: dict[str, Any] = {"types": list(types)}
    if related_to:
        params["related_to"] = _resolve_endpoint(related_to)
    if from_identity is not None:
        params["from_identity"] = from_identity
    if to_identity is not None:
        params["to_identity"] = to_identity
    sock = AgentConfig().socket_path
    http = httpx.Client(
        transport=httpx.HTTPTransport(uds=str(sock)),
        base_url="http://cilia/v1",
        timeout=httpx.Timeout(10.0, read=timeout or None),
    )
    seen = 0
    deadline = time.monotonic() + timeout if timeout else None
    try:
        with http.stream("GET", "/monitor", params=params) as resp:
            if resp.status_code >= 400:
                resp.read()
                _fail(resp.json().get("error", resp.text))
            for raw in resp.iter_lines():
                if not raw:
                    continue
                ev = json.loads(raw)
                if ev.get("type") == "start":
                    shown = ", ".join(ev["filter"]["types"])
                    click.echo(f"Listening for events ({shown}). Press Ctrl-C to quit", err=True)
                else:
                    out = json.dumps(ev) if fmt == "json" else format_event(ev, verbose)
                    sys.stdout.write(out + "\n")
                    sys.stdout.flush()
                    if ev.get("type") != "lost":
                        seen += 1
                if (count and seen >= count) or (deadline and time.monotonic() >= deadline):
                    return
    except httpx.ReadTimeout:
        return
    except (httpx.ConnectError, FileNotFoundError) as exc:
        _fail(f"cannot reach the agent at {sock}: is it running? [{exc}]")
    except KeyboardInterrupt:
        return
    finally:
        http.close()


# -- metrics --------------------------------------------------------------------


@click.group()
def metrics() -> None:
    """The agent's Prometheus metrics."""


@metrics.command("list")
@output_option()
def metrics_list(fmt: str) -> None:
    """Every metric with its labels and value."""
    rows = _api("GET", "/metrics")
    if emit(rows, fmt):
        return
    table(
        [
            (
                r["name"],
                " ".join(f"{k}={v}" for k, v in sorted(r["labels"].items())),
                f"{r['value']:g}",
            )
            for r in rows
        ],
        ["METRIC", "LABELS", "VALUE"],
    )


# -- bpf ct -----------------------------------------------------------------------


@click.group("ct")
def bpf_ct() -> None:
    """The connection-tracking table."""


def _ct_params(target: str) -> dict[str, Any]:
    return {} if target == "global" else {"endpoint": _resolve_endpoint(target)}


@bpf_ct.command("list")
@click.argument("target", default="global")
@output_option()
def bpf_ct_list(target: str, fmt: str) -> None:
    """Entries of one endpoint (id, NS/POD or IPv4) or of every endpoint (global)."""
    rows = _api("GET", "/bpf/ct", **_ct_params(target))
    if emit(rows, fmt):
        return
    table(
        [
            (
                r["endpoint"],
                r["direction"],
                r["protocol"],
                r["source"],
                r["destination"],
                r["state"],
                r["expires-in"],
                r["packets"],
                r["bytes"],
            )
            for r in rows
        ],
        [
            "ENDPOINT",
            "DIRECTION",
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "STATE",
            "EXPIRES-IN",
            "PACKETS",
            "BYTES",
        ],
    )


@bpf_ct.command("flush")
@click.argument("target", default="global")
def bpf_ct_flush(target: str) -> None:
    """Delete the entries of one endpoint, or every entry (global)."""
    res = _api("DELETE", "/bpf/ct", **_ct_params(target))
    click.echo(f"Flushed {res['deleted']} entries from the CT table")


# -- bpf tunnel and bpf ipcache ---------------------------------------------------


@click.group("tunnel")
def bpf_tunnel() -> None:
    """The tunnel map: other nodes' pod ranges and their tunnel endpoints."""


@bpf_tunnel.command("list")
@output_option()
def bpf_tunnel_list(fmt: str) -> None:
    """Every pod range of another node with that node's underlay address."""
    rows = _api("GET", "/bpf/tunnel")
    if emit(rows, fmt):
        return
    table([(r["prefix"], r["node-ip"]) for r in rows], ["PREFIX", "TUNNEL ENDPOINT"])


@click.group("ipcache")
def bpf_ipcache() -> None:
    """The IP-to-identity cache the datapath reads."""


@bpf_ipcache.command("list")
@output_option()
def bpf_ipcache_list(fmt: str) -> None:
    """Every prefix with its identity and, for other nodes' pods, their tunnel endpoint."""
    rows = _api("GET", "/bpf/ipcache")
    if emit(rows, fmt):
        return
    table(
        [(r["prefix"], r["identity"], r["tunnel-endpoint"] or "-") for r in rows],
        ["PREFIX", "IDENTITY", "TUNNEL ENDPOINT"],
    )


# -- endpoint config and node config --------------------------------------------


@click.command("config")
@click.argument("key")
@click.argument("options", nargs=-1)
def endpoint_config(key: str, options: tuple[str, ...]) -> None:
    """Show or change an endpoint's options: cilia endpoint config ID TraceNotification=true."""
    if options:
        res = _api("PATCH", f"/endpoint/{key}/config", _options(options, ("TraceNotification",)))
    else:
        res = _api("GET", f"/endpoint/{key}/config")
    click.echo(f"TraceNotification   {'Enabled' if res['TraceNotification'] else 'Disabled'}")


@click.command("config")
@click.argument("options", nargs=-1)
def node_config(options: tuple[str, ...]) -> None:
    """Show or change node-wide options: cilia config TraceNotification=true."""
    if options:
        res = _api("PATCH", "/config/options", _options(options, ("TraceNotification",)))
    else:
        res = _api("GET", "/config/options")
    click.echo(f"TraceNotification   {'Enabled' if res['TraceNotification'] else 'Disabled'}")


def status_lines(data: dict[str, Any]) -> list[str]:
    """Conntrack, monitor, metrics and controller lines of `cilia status`."""
    ct, mon = data.get("conntrack", {}), data.get("monitor", {})
    lines = []
    if ct:
        full = ", FULL" if ct["full"] else ""
        counted = (
            f"{ct['entries']}/{ct['max-entries']} entries{full}"
            if ct["last-gc"]
            else "not scanned yet"
        )
        lines.append(
            f"Conntrack:          {counted}, "
            f"GC every {ct['interval-seconds']:g}s, {ct['deleted-total']} collected"
        )
    if mon:
        lost = mon["datapath-lost"]["drop"] + mon["datapath-lost"]["trace"] + mon["queue-lost"]
        lines.append(
            f"Monitor:            {mon['subscribers']} listeners, "
            f"{mon['datapath-events']} datapath events, {lost} lost"
        )
    if data.get("metrics", {}).get("address"):
        lines.append(f"Metrics:            http://{data['metrics']['address']}/metrics")
    kv = data.get("kvstore", {})
    if kv.get("backend") == "etcd":
        lease = kv.get("lease", {})
        health = "Ok" if kv.get("healthy") else "Unreachable"
        unsynced = [name for name, w in kv.get("watches", {}).items() if not w.get("synced")]
        lines.append(
            f"KVStore:            {health}, etcd {', '.join(kv.get('endpoints', []))}, "
            f"lease {lease.get('lease_hex', '-')} (ttl {lease.get('ttl', '-')}s), "
            f"{kv.get('nodes', 0)} nodes"
            + (f", watches not synced: {', '.join(unsynced)}" if unsynced else "")
        )
    else:
        lines.append("KVStore:            none (one node)")
    runtimes = data.get("container-runtimes", [])
    if not runtimes:
        lines.append("ContainerRuntime:   none")
    for rt in runtimes:
        health = "Ok" if rt.get("healthy") else "Unhealthy"
        lines.append(
            f"ContainerRuntime:   {rt.get('runtime')}: {health} ({rt.get('endpoint')}), "
            f"{rt.get('message', '')}"
        )
    now = time.time()
    for c in data.get("controller-list", []):
        ago = f"{now - c['last-success']:.0f}s ago" if c["last-success"] else "never"
        state = f"failing: {c['last-error']}" if c["consecutive-failures"] else "ok"
        lines.append(
            f"  {c['name']:<22} every {c['interval-seconds']:>5g}s  last success {ago:<9} "
            f"failures {c['failures']:<3} {state}"
        )
    return lines


def register(main: click.Group, call: Callable[..., Any], fail: Callable[[str], NoReturn]) -> None:
    """Add these commands to the `cilia` command; `call`/`fail` are the CLI's API helpers."""
    global _call, _fail_fn
    _call, _fail_fn = call, fail
    main.add_command(monitor)
    main.add_command(metrics)
    main.add_command(node_config)
    bpf = main.commands["bpf"]
    endpoint = main.commands["endpoint"]
    assert isinstance(bpf, click.Group) and isinstance(endpoint, click.Group)
    bpf.add_command(bpf_ct)
    bpf.add_command(bpf_tunnel)
    bpf.add_command(bpf_ipcache)
    endpoint.add_command(endpoint_config)
