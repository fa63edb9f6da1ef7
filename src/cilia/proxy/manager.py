"""The facade the agent drives: per-endpoint redirects in, proxy ports out.

HTTP redirects become Envoy listeners (Envoy is started on first use); Kafka
redirects become Cilia Kafka proxies on a private event loop thread. A
redirect keeps its proxy port for as long as it exists, across policy changes.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cilia.policy.desired import Direction, Redirect
from cilia.proxy.envoy.config import HttpListener, Settings
from cilia.proxy.envoy.proxy import EnvoyProxy
from cilia.proxy.kafka.policy import KafkaPolicy
from cilia.proxy.kafka.proxy import KafkaProxy
from cilia.proxy.loop import LoopThread
from cilia.proxy.records import CountsHook, L7Record
from cilia.proxy.sockets import ANY, KeepAlive, family_of, listen_hosts

log = logging.getLogger(__name__)

WORLD_IDENTITY = 2

Key = tuple[int, Direction, int]
"""(endpoint id, direction, port): what a redirect is known by."""


@dataclass(frozen=True)
class RedirectInfo:
    """One realized redirect, as `cilia status --all-redirects` lists it."""

    endpoint_id: int
    direction: str
    port: int
    proxy_port: int
    parser: str
    peers: int


class IdentityIndex:
    """Longest-prefix lookup of an address in an ipcache snapshot (unknown → world).

    Answers are cached per address for the life of the snapshot (a refresh makes
    a new index); the cache starts over when it reaches `CACHE_SIZE` addresses.
    """

    CACHE_SIZE = 4096

    def __init__(self, ipcache: Mapping[str, int]) -> None:
        nets = [(ipaddress.ip_network(p, strict=False), i) for p, i in ipcache.items()]
        self._nets = sorted(nets, key=lambda item: -item[0].prefixlen)
        self._cache: dict[str, int] = {}

    def __call__(self, ip: str) -> int:
        identity = self._cache.get(ip)
        if identity is None:
            identity = self._lookup(ip)
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            self._cache[ip] = identity
        return identity

    def _lookup(self, ip: str) -> int:
        addr = ipaddress.ip_address(ip)
        for net, identity in self._nets:
            if addr in net:
                return identity
        return WORLD_IDENTITY


class ProxyManager:
    """Starts, updates and lists the L7 proxies of this node.

    `ipcache()` returns the current prefix → identity map (the agent's ipcache);
    call `refresh()` after it changes. `upstream(endpoint_id, redirect)`, when
    given, names a fixed upstream per redirect (plain mode for tests); without
    it proxies are transparent and forward to each flow's original destination.
    Proxies report request counts to `on_counts` (in batches) and records to
    `on_request` while `wants_records()`.
    """

    def __init__(
        self,
        directory: Path,
        ipcache: Callable[[], Mapping[str, int]],
        *,
        bind: str = ANY,
        port_range: tuple[int, int] = (10000, 20000),
        upstream: Callable[[int, Redirect], tuple[str, int]] | None = None,
        on_request: Callable[[L7Record], None] | None = None,
        on_counts: CountsHook | None = None,
        wants_records: Callable[[], bool] = lambda: True,
        upstream_mark: Callable[[int], int] | None = None,
        keepalive: KeepAlive | None = None,
        envoy_binary: str | None = None,
    ) -> None:
        self.directory = directory
        self.ipcache = ipcache
        self.bind = bind
        self.port_range = port_range
        self.upstream = upstream
        self.on_request = on_request
        self.on_counts = on_counts
        self.wants_records = wants_records
        self.upstream_mark = upstream_mark
        self.keepalive = keepalive or KeepAlive()
        self.envoy = EnvoyProxy(
            Settings(
                directory / "envoy",
                bind=bind,
                transparent=upstream is None,
                keepalive=self.keepalive,
                upstream_mark=upstream_mark(0) if upstream_mark else 0,
            ),
            identity_of=self.identity_of,
            on_request=on_request,
            on_counts=on_counts,
            wants_records=wants_records,
            binary=envoy_binary,
        )
        self._loop = LoopThread("cilia-kafka-proxy")
        self._lock = threading.RLock()
        self._index = IdentityIndex({})
        self._redirects: dict[Key, tuple[Redirect, int]] = {}
        self._kafka: dict[Key, KafkaProxy] = {}
        self._removed_http: set[Key] = set()
        self._identities: dict[int, int] = {}
        """Endpoint id -> its identity (the source identity of its egress upstreams)."""
        self._envoy_started = False
        self._next_port = port_range[0]

    def identity_of(self, ip: str) -> int:
        """The security identity of an address (from the last ipcache snapshot)."""
        return self._index(ip)

    def start(self) -> None:
        """Start the Kafka proxies' event loop (Envoy starts with the first HTTP redirect)."""
        self._index = IdentityIndex(self.ipcache())
        self._loop.start()

    def stop(self) -> None:
        """Stop every proxy and Envoy."""
        with self._lock:
            for key in list(self._kafka):
                self._loop.call(self._kafka.pop(key).stop())
            self._loop.stop()
            if self._envoy_started:
                self.envoy.stop()
                self._envoy_started = False
            self._redirects.clear()

    def update(
        self, endpoint_id: int, redirects: Iterable[Redirect], identity: int = 0
    ) -> dict[Redirect, int]:
        """Make the endpoint's redirects exactly `redirects`; returns each one's proxy port.

        `identity` is the endpoint's: egress proxies put it in their upstream mark, so
        a destination on another node sees who really asked (tunnel VNI).

        Raises EnvoyConfigError if Envoy refuses the HTTP part (the previous
        HTTP configuration keeps serving; Kafka changes are applied).
        """
        wanted = {(endpoint_id, r.direction, r.port): r for r in redirects}
        with self._lock:
            identity_changed = self._identities.get(endpoint_id, 0) != identity
            if wanted:
                self._identities[endpoint_id] = identity
            else:
                self._identities.pop(endpoint_id, None)
            for key in [k for k in self._redirects if k[0] == endpoint_id and k not in wanted]:
                self._drop(key)
            result: dict[Redirect, int] = {}
            http_changed = False
            for key, redirect in wanted.items():
                old = self._redirects.get(key)
                if old is not None and old[0].parser != redirect.parser:
                    self._drop(key)
                    old = None
                port = old[1] if old is not None else self._allocate()
                if redirect.parser == "kafka":
                    if identity_changed and key in self._kafka:
                        self._loop.call(self._kafka.pop(key).stop())
                    self._kafka_update(key, redirect, port)
                http_changed |= redirect.parser == "http" and (
                    old is None or old[0] != redirect or identity_changed
                )
                self._redirects[key] = (redirect, port)
                result[redirect] = port
            http_changed |= bool(self._removed_http)
            self._removed_http.clear()
            if http_changed:
                self._apply_http()
            return result

    def refresh(self) -> None:
        """Re-read the ipcache: new identities for Kafka lookups and Envoy's address sets."""
        with self._lock:
            self._index = IdentityIndex(self.ipcache())
            if self._envoy_started:
                self._apply_http()

    def list_redirects(self) -> list[RedirectInfo]:
        with self._lock:
            return [
                RedirectInfo(ep, d.name.lower(), port, proxy_port, r.parser, len(r.allows))
                for (ep, d, port), (r, proxy_port) in sorted(self._redirects.items())
            ]

    def counters(self) -> dict[str, int]:
        """Totals over all proxies: received, forwarded, denied, parse_errors."""
        total = {"received": 0, "forwarded": 0, "denied": 0, "parse_errors": 0}
        with self._lock:
            sources = [p.counters for p in self._kafka.values()] + list(
                self.envoy.counters.values()
            )
        for c in sources:
            for name, value in c.snapshot().items():
                total[name] += value
        return total

    @property
    def envoy_restarts(self) -> int:
        return self.envoy.restarts

    def _drop(self, key: Key) -> None:
        redirect, _ = self._redirects.pop(key)
        if redirect.parser == "kafka":
            self._loop.call(self._kafka.pop(key).stop())
        else:
            self._removed_http.add(key)

    def _kafka_update(self, key: Key, redirect: Redirect, port: int) -> None:
        policy = KafkaPolicy(redirect.allows)
        proxy = self._kafka.get(key)
        if proxy is not None:
            proxy.set_policy(policy)
            return
        proxy = KafkaProxy(
            policy,
            self.identity_of,
            host=self.bind,
            port=port,
            direction=key[1],
            upstream=self.upstream(key[0], redirect) if self.upstream else None,
            on_request=self.on_request,
            on_counts=self.on_counts,
            wants_records=self.wants_records,
            upstream_mark=self._mark_of(key),
            keepalive=self.keepalive,
        )
        self._loop.call(proxy.start())
        self._kafka[key] = proxy

    def _mark_of(self, key: Key) -> Callable[[int], int] | None:
        """The upstream mark of a proxy: egress carries the endpoint's identity, ingress
        the peer's (Kafka) or none (0: the datapath authorized the flow at its source)."""
        if self.upstream_mark is None:
            return None
        mark = self.upstream_mark
        if key[1] is Direction.EGRESS:
            identity = self._identities.get(key[0], 0)
            return lambda _peer: mark(identity)
        return lambda _peer: mark(0)

    def _source_identity(self, key: Key) -> int:
        return self._identities.get(key[0], 0) if key[1] is Direction.EGRESS else 0

    def _apply_http(self) -> None:
        listeners = [
            HttpListener(
                f"cilia-{ep}-{d.name.lower()}-{port}",
                proxy_port,
                d,
                r.allows,
                self.upstream(ep, r) if self.upstream else None,
                self._source_identity((ep, d, port)),
            )
            for (ep, d, port), (r, proxy_port) in sorted(self._redirects.items())
            if r.parser == "http"
        ]
        if not self._envoy_started:
            if not listeners:
                return
            self.envoy.start()
            self._envoy_started = True
        self.envoy.apply(listeners, self.ipcache())

    def _allocate(self) -> int:
        used = {port for _, port in self._redirects.values()}
        low, high = self.port_range
        for _ in range(high - low + 1):
            port = self._next_port
            self._next_port = low if port >= high else port + 1
            if port not in used and all(_bindable(h, port) for h in listen_hosts(self.bind)):
                return port
        raise RuntimeError(f"no free proxy port in {low}-{high}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket(family_of(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True
