"""What the proxies report per request: records for monitor events and counters."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from cilia.policy.desired import Direction

Verdict = Literal["forwarded", "denied", "parse-error"]
CountsHook = Callable[[Mapping[Verdict, int]], None]
"""Receives request counts per verdict, one call per batch of requests."""


@dataclass(frozen=True)
class L7Record:
    """One L7 request seen by a proxy.

    `peer_identity` is the source's identity on ingress and the destination's
    on egress. Kafka records carry the api key, version, client id and topics;
    HTTP records carry method, path, host and the response code.
    """

    parser: Literal["http", "kafka"]
    verdict: Verdict
    direction: Direction
    peer_identity: int
    source: tuple[str, int]
    destination: tuple[str, int]
    proxy_port: int
    kafka_api_key: int | None = None
    kafka_api_version: int | None = None
    kafka_correlation_id: int | None = None
    kafka_client_id: str | None = None
    kafka_topics: tuple[str, ...] | None = None
    http_method: str | None = None
    http_path: str | None = None
    http_host: str | None = None
    http_status: int | None = None
    error: str | None = None


@dataclass
class Counters:
    """Per-proxy request counters (the policy_l7_*_total metrics); thread-safe increments."""

    received: int = 0
    forwarded: int = 0
    denied: int = 0
    parse_errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, record: L7Record) -> None:
        """Count one record."""
        self.add(record.verdict, 1)

    def add(self, verdict: Verdict, n: int) -> None:
        """Count `n` requests of one verdict (received counts every request that was read,
        even a malformed one)."""
        with self._lock:
            self.received += n
            if verdict == "forwarded":
                self.forwarded += n
            elif verdict == "denied":
                self.denied += n
            else:
                self.parse_errors += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "received": self.received,
                "forwarded": self.forwarded,
                "denied": self.denied,
                "parse_errors": self.parse_errors,
            }
