"""`cilia status`."""

from __future__ import annotations

import time
from typing import Any

import click

from cilia.cli.api import call
from cilia.cli.output import emit, output_option, table


@click.command()
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
    if data.get("ipv6-range"):
        click.echo(f"Pod IPv6 range:     {data['ipv6-range']}")
    if svc := data.get("services"):
        devices = ", ".join(svc["nodeport-devices"]) or "none"
        click.echo(
            f"Services:           {svc['frontends']} frontend{'' if svc['frontends'] == 1 else 's'}"
            f" ({svc['nodeport-frontends']} "
            f"NodePort on {devices}), ClusterIPs from {svc['service-cidr']}, "
            f"node ports {svc['node-ports']}"
        )
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
