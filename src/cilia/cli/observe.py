"""Observability commands: monitor, metrics list."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from cilia.cli.api import call, client, fail, resolve_endpoint
from cilia.cli.client import ApiError
from cilia.cli.output import emit, output_option, table

EVENT_TYPES = ("drop", "trace", "l7", "agent")


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
@click.option("--related-to", help="Only events of this endpoint (id, NS/POD, IPv4 or IPv6).")
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
        params["related_to"] = resolve_endpoint(related_to)
    if from_identity is not None:
        params["from_identity"] = from_identity
    if to_identity is not None:
        params["to_identity"] = to_identity
    seen = 0
    deadline = time.monotonic() + timeout if timeout else None
    try:
        with client().stream("/monitor", params, read_timeout=timeout or None) as lines:
            for raw in lines:
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
    except TimeoutError:
        return
    except ApiError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        return


# -- metrics --------------------------------------------------------------------


@click.group()
def metrics() -> None:
    """The agent's Prometheus metrics."""


@metrics.command("list")
@output_option()
def metrics_list(fmt: str) -> None:
    """Every metric with its labels and value."""
    rows = call("GET", "/metrics")
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
