"""The agent's side of L7 policy: drives the proxies and reports their requests.

Redirects come from the policy engine (EndpointPolicy.redirects); this module
hands them to the ProxyManager, which answers with proxy ports that the
datapath writes into the policy map. Every request a proxy sees counts in the
cilia_policy_l7_* metrics (in batches) and becomes a monitor event while a
monitor client takes L7 events (only then are per-request records built).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cilia.agent.metrics import l7_counters
from cilia.agent.monitor import Monitor
from cilia.datapath.events import host_port
from cilia.datapath.layout import MARK_MAGIC_FROM_PROXY
from cilia.datapath.proxy_routing import ensure_proxy_routing
from cilia.policy.desired import Direction, Redirect
from cilia.proxy.manager import ProxyManager, RedirectInfo
from cilia.proxy.records import L7Record, Verdict

log = logging.getLogger("cilia.l7")


class L7Gateway:
    """Starts the proxies on the first redirect and keeps them in step with policy."""

    def __init__(
        self,
        directory: Path,
        ipcache: Callable[[], Mapping[str, int]],
        monitor: Monitor,
        endpoint_of_ip: Callable[[str], tuple[int, int] | None],
    ) -> None:
        self.directory = directory
        self.ipcache = ipcache
        self.monitor = monitor
        self.endpoint_of_ip = endpoint_of_ip
        self.manager: ProxyManager | None = None
        self._with_redirects: set[int] = set()

    def update(
        self, endpoint_id: int, redirects: frozenset[Redirect], identity: int = 0
    ) -> dict[Redirect, int]:
        """Make the proxies serve exactly `redirects` for an endpoint (whose identity egress
        upstreams carry); their proxy ports."""
        if not redirects and endpoint_id not in self._with_redirects:
            return {}
        if self.manager is None:
            # The directory tells `cilia down` that this agent installed the routing.
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            ensure_proxy_routing()
            self.manager = ProxyManager(
                self.directory,
                self.ipcache,
                # Identity 0 in the mark: the datapath already authorized the flow
                # (ingress); egress upstreams carry the source endpoint's identity.
                upstream_mark=lambda identity: MARK_MAGIC_FROM_PROXY | (identity << 16),
                on_request=self._on_request,
                on_counts=self._on_counts,
                wants_records=lambda: self.monitor.wants("l7"),
            )
            self.manager.start()
        ports = self.manager.update(endpoint_id, redirects, identity)
        if redirects:
            self._with_redirects.add(endpoint_id)
        else:
            self._with_redirects.discard(endpoint_id)
        return ports

    def refresh(self) -> None:
        """The ipcache changed: proxies re-read peer identities."""
        if self.manager is not None:
            self.manager.refresh()

    def redirects(self) -> list[RedirectInfo]:
        """Realized redirects (for `cilia status --all-redirects`)."""
        return self.manager.list_redirects() if self.manager else []

    def status(self) -> dict[str, Any]:
        """Proxy summary for `cilia status`."""
        if self.manager is None:
            return {"redirects": 0, "envoy-restarts": 0}
        return {
            "redirects": len(self.manager.list_redirects()),
            "envoy-restarts": self.manager.envoy_restarts,
            **self.manager.counters(),
        }

    def stop(self) -> None:
        """Stop every proxy (Envoy included)."""
        if self.manager is not None:
            self.manager.stop()
            self.manager = None

    def _on_counts(self, counts: Mapping[Verdict, int]) -> None:
        counters = l7_counters()
        counters.received.inc(sum(counts.values()))
        for verdict, n in counts.items():
            {"forwarded": counters.forwarded, "denied": counters.denied}.get(
                verdict, counters.parse_errors
            ).inc(n)
        self.monitor.seen("l7")

    def _on_request(self, rec: L7Record) -> None:
        local_ip = rec.destination[0] if rec.direction is Direction.INGRESS else rec.source[0]
        local = self.endpoint_of_ip(local_ip)
        ep_id, ep_identity = local if local else (None, None)
        src, dst = (
            (rec.peer_identity, ep_identity)
            if rec.direction is Direction.INGRESS
            else (ep_identity, rec.peer_identity)
        )
        self.monitor.publish(
            {
                "type": "l7",
                "endpoint": ep_id,
                "src-identity": src,
                "dst-identity": dst,
                "direction": rec.direction.name.lower(),
                "parser": rec.parser,
                "verdict": rec.verdict,
                "source": host_port(*rec.source),
                "destination": host_port(*rec.destination),
                "summary": _summary(rec),
                **{
                    k: v
                    for k, v in (
                        ("method", rec.http_method),
                        ("path", rec.http_path),
                        ("host", rec.http_host),
                        ("status", rec.http_status),
                        ("kafka-api-key", rec.kafka_api_key),
                        ("kafka-api-version", rec.kafka_api_version),
                        ("kafka-client-id", rec.kafka_client_id),
                        ("kafka-topics", list(rec.kafka_topics or ())),
                        ("error", rec.error),
                    )
                    if v not in (None, [])
                },
            }
        )


def _summary(rec: L7Record) -> str:
    if rec.parser == "http":
        return f"HTTP {rec.http_method} {rec.http_host or ''}{rec.http_path} => {rec.http_status}"
    topics = ",".join(rec.kafka_topics or ())
    return f"Kafka apiKey {rec.kafka_api_key} v{rec.kafka_api_version} topics [{topics}]"
