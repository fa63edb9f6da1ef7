"""Prometheus metrics of the agent (the reference's names, prefixed `cilia_`).

Packet counters are read from the datapath's per-CPU map at scrape time;
gauges are computed from the agent's state at scrape time too, so nothing
has to be kept in sync. Only events (regenerations, import errors, datapath
errors, L7 verdicts) are counted as they happen.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

from cilia.datapath.drop_reasons import reason_name

if TYPE_CHECKING:
    from cilia.agent.daemon import Agent

DIRECTIONS = {0: "INGRESS", 1: "EGRESS"}


@dataclass
class L7Counters:
    """The L7 proxy counters (registered now; incremented by the proxies)."""

    registry: CollectorRegistry
    parse_errors: Counter = field(init=False)
    forwarded: Counter = field(init=False)
    denied: Counter = field(init=False)
    received: Counter = field(init=False)

    def __post_init__(self) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(f"cilia_policy_l7_{name}_total", doc, registry=self.registry)

        self.parse_errors = counter("parse_errors", "L7 requests the proxy could not parse")
        self.forwarded = counter("forwarded", "L7 requests forwarded")
        self.denied = counter("denied", "L7 requests denied by policy")
        self.received = counter("received", "L7 requests received")


_active: AgentMetrics | None = None
_detached_l7: L7Counters | None = None


def l7_counters() -> L7Counters:
    """The L7 counters of the running agent (a detached set when none runs)."""
    global _detached_l7
    if _active is not None:
        return _active.l7
    if _detached_l7 is None:
        _detached_l7 = L7Counters(CollectorRegistry())
    return _detached_l7


class AgentMetrics:
    """The agent's registry, its event counters and the optional HTTP endpoint."""

    def __init__(self, agent: Agent) -> None:
        global _active
        self.registry = CollectorRegistry()
        self.regenerations = {"success": 0, "fail": 0}
        self.policy_import_errors = 0
        self.datapath_errors = Counter(
            "cilia_datapath_errors_total",
            "Errors of datapath operations (map writes, attach, event reading)",
            registry=self.registry,
        )
        self.kvstore_operations = Counter(
            "cilia_kvstore_operations_total",
            "Operations on the kvstore by action and outcome (success, fail, unavailable)",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.l7 = L7Counters(self.registry)
        self.registry.register(_AgentCollector(agent, self))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.address = ""
        self.agent = agent
        self.totals: dict[str, int] = {}
        _active = self

    def sync(self) -> str:
        """Controller: read the datapath counters (a failure counts as a datapath error)."""
        try:
            counters = self.agent.datapath.counters()
        except OSError:
            self.datapath_errors.inc()
            raise
        fwd = sum(p for (r, _), (p, _) in counters.items() if r == 0)
        self.totals = {"forwarded": fwd, "dropped": sum(p for p, _ in counters.values()) - fwd}
        return f"{fwd} packets forwarded, {self.totals['dropped']} dropped"

    def kvstore_operation(self, action: str, outcome: str) -> None:
        """Count one kvstore operation (the etcd client reports each)."""
        self.kvstore_operations.labels(action=action, outcome=outcome).inc()

    def serve(self, address: str) -> str:
        """Serve /metrics on HOST:PORT (port 0 picks a free one); returns the bound address."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self._server, self._thread = start_http_server(int(port), host, self.registry)
        bound = self._server.server_address
        self.address = f"{bound[0]!s}:{bound[1]}"
        return self.address

    def stop(self) -> None:
        """Stop the HTTP endpoint."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def samples(self) -> list[dict[str, Any]]:
        """Every sample of the registry (for `cilia metrics list`)."""
        return [
            {"name": s.name, "labels": dict(s.labels), "value": s.value}
            for metric in self.registry.collect()
            for s in metric.samples
            if not s.name.endswith("_created")
        ]


class _AgentCollector(Collector):
    """Computes the datapath and state metrics when scraped."""

    def __init__(self, agent: Agent, metrics: AgentMetrics) -> None:
        self.agent = agent
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._packets()
        a, m = self.agent, self.metrics
        regen = UnknownMetricFamily(
            "cilia_endpoint_regenerations",
            "Endpoint regenerations by outcome",
            labels=["outcome"],
        )
        for outcome, n in m.regenerations.items():
            regen.add_metric([outcome], n)
        yield regen
        endpoints = list(a.endpoints.values())
        yield _gauge(
            "cilia_endpoint_regenerating",
            "Endpoints being regenerated",
            sum(1 for ep in endpoints if ep.state.value == "regenerating"),
        )
        yield _gauge("cilia_endpoint_count", "Local endpoints", len(endpoints))
        yield _gauge("cilia_identity_count", "Allocated identities", len(a.identities.items()))
        yield _gauge("cilia_policy_count", "Policy rules in the repository", len(a.repo.rules))
        yield _gauge("cilia_policy_max_revision", "Highest policy revision", a.repo.revision)
        yield UnknownMetricFamily(
            "cilia_policy_import_errors", "Refused policy imports", value=m.policy_import_errors
        )
        yield _gauge(
            "cilia_controllers_failing",
            "Controllers whose last run failed",
            len(a.controllers.failing()),
        )
        ts = GaugeMetricFamily(
            "cilia_event_ts", "Time of the last event by source", labels=["source"]
        )
        for source, when in sorted(a.monitor.last_event.items()):
            ts.add_metric([source], when)
        yield ts
        yield from self._conntrack_and_monitor()

    def _packets(self) -> Iterator[Metric]:
        drops = CounterMetricFamily(
            "cilia_drop_count", "Packets dropped by the datapath", labels=["reason", "direction"]
        )
        drop_bytes = CounterMetricFamily(
            "cilia_drop_bytes", "Bytes dropped by the datapath", labels=["reason", "direction"]
        )
        fwd = CounterMetricFamily(
            "cilia_forward_count", "Packets forwarded by the datapath", labels=["direction"]
        )
        fwd_bytes = CounterMetricFamily(
            "cilia_forward_bytes", "Bytes forwarded by the datapath", labels=["direction"]
        )
        try:
            counters = self.agent.datapath.counters()
        except OSError:
            self.metrics.datapath_errors.inc()
            counters = {}
        for (reason, direction), (packets, nbytes) in sorted(counters.items()):
            d = DIRECTIONS.get(direction, str(direction))
            if reason == 0:
                fwd.add_metric([d], packets)
                fwd_bytes.add_metric([d], nbytes)
            else:
                drops.add_metric([reason_name(reason), d], packets)
                drop_bytes.add_metric([reason_name(reason), d], nbytes)
        yield from (drops, drop_bytes, fwd, fwd_bytes)

    def _conntrack_and_monitor(self) -> Iterator[Metric]:
        gc = self.agent.ct_gc
        yield _gauge("cilia_conntrack_entries", "CT entries at the last GC", gc.last.entries)
        yield _gauge("cilia_conntrack_max_entries", "Size of the CT table", gc.last.max_entries)
        yield CounterMetricFamily(
            "cilia_conntrack_gc_deleted", "CT entries removed by GC", value=gc.deleted_total
        )
        yield CounterMetricFamily(
            "cilia_conntrack_full", "GC runs that found the CT table full", value=gc.full_total
        )
        mon = self.agent.monitor.status()
        lost = CounterMetricFamily(
            "cilia_monitor_events_lost", "Monitor events lost", labels=["source"]
        )
        lost.add_metric(["datapath"], sum(mon["datapath-lost"].values()))
        lost.add_metric(["monitor"], mon["queue-lost"])
        yield lost
        yield _gauge("cilia_monitor_subscribers", "Connected monitors", mon["subscribers"])


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)
