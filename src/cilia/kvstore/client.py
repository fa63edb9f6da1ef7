"""A typed etcd v3 client: keys are `str`, values `bytes`, every failure a `KvstoreError`.

Why etcd3gw: it is synchronous like the agent's threads, speaks etcd's own HTTP gateway
(`/v3/...`, JSON) so there is no gRPC/protobuf version to clash with the rest of the
environment, and it is maintained (OpenStack). We use its client to post (one per
endpoint, HTTP errors mapped to its exceptions) and build the requests ourselves,
because its convenience methods drop the response header (the revisions a watch or a
compare needs) and encode `str` keys as latin-1. Under it, instead of its `requests`
session, a `transport.GatewaySession`: `requests` cost four times the CPU per call,
which decided how fast identities are allocated (measurements in transport.py).

Why not etcd3gw's watcher: it silently ignores `compact_revision` and `canceled`
responses, so a watch that lost its history would just go quiet. `Watch` reads the
gateway's watch stream itself (one JSON object per line, `transport.Stream`), which
it can also shut down from another thread to cancel at once.

This wrapper is the one place for error mapping, endpoint fail-over, the
`on_operation(action, outcome)` hook behind `cilia_kvstore_operations_total`, and
(in `Reflector`) the list/watch/resync loop.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import requests
from etcd3gw import exceptions as gw_exceptions
from etcd3gw.client import Etcd3Client

from cilia.kvstore.transport import GatewaySession, Stream

log = logging.getLogger("cilia.kvstore")

OperationHook = Callable[[str, str], None]
"""`on_operation(action, outcome)`, outcome one of "success", "fail", "unavailable"."""

_UNREACHABLE = (gw_exceptions.ConnectionFailedError, gw_exceptions.ConnectionTimeoutError)
_GRPC_NOT_FOUND = 5
_POOL_SIZE = 32


class KvstoreError(Exception):
    """An etcd request failed."""


class KvstoreUnavailable(KvstoreError):
    """No endpoint of etcd could be reached, or none answered in time."""


class LeaseNotFound(KvstoreError):
    """A write named a lease that no longer exists (expired, revoked or wiped)."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    """One change; a delete has no value and zero create_revision, version and lease."""

    type: Literal["put", "delete"]
    key: str
    value: bytes | None
    mod_revision: int
    create_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True)
class Compare:
    """A txn condition; with `range_end`, every key of [key, range_end) must satisfy it
    (etcd >= 3.3). An empty range compares as a key that does not exist (version,
    create and mod 0), except that a `value` compare on it always fails."""

    key: str
    target: Literal["version", "create", "mod", "value"]
    result: Literal["==", "!=", "<", ">"]
    value: int | bytes
    range_end: str | None = None


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True)
class Get:
    """Read keys; `min_mod_revision` keeps only those changed at or after it."""

    key: str
    prefix: bool = False
    keys_only: bool = False
    min_mod_revision: int = 0


@dataclass(frozen=True)
class Count:
    """How many keys match (etcd ignores revision filters when counting)."""

    key: str
    prefix: bool = False


TxnOp = Put | Delete | Get | Count
TxnResponse = list[KeyValue] | int | None
"""Per op: the keys of a `Get`, the number of a `Count` or `Delete`, None for a `Put`."""


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[TxnResponse]


def prefix_end(prefix: str) -> str:
    """etcd's range end for every key starting with `prefix` ("\\0" = to the end)."""
    raw = bytearray(_key_bytes(prefix))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return "\0"
    raw[-1] += 1
    return bytes(raw).decode("utf-8", "surrogateescape")


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _b64(data: str | bytes) -> str:
    raw = _key_bytes(data) if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _key_from(data: str) -> str:
    return _unb64(data).decode("utf-8", "surrogateescape")


def _keyvalue(raw: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        key=_key_from(raw["key"]),
        value=_unb64(raw.get("value", "")),
        mod_revision=int(raw.get("mod_revision", 0)),
        create_revision=int(raw.get("create_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=int(raw.get("lease", 0)),
    )


def _header_revision(result: Mapping[str, Any]) -> int:
    return int(result.get("header", {}).get("revision", 0))


def _range(key: str, prefix: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key)}
    if prefix:
        body["range_end"] = _b64(prefix_end(key))
    return body


_TARGETS = {"version": "VERSION", "create": "CREATE", "mod": "MOD", "value": "VALUE"}
_TARGET_FIELDS = {
    "version": "version",
    "create": "create_revision",
    "mod": "mod_revision",
    "value": "value",
}
_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


def _compare_json(c: Compare) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key": _b64(c.key),
        "target": _TARGETS[c.target],
        "result": _RESULTS[c.result],
    }
    if c.target == "value":
        if not isinstance(c.value, bytes):
            raise TypeError("a value compare needs bytes")
        body["value"] = _b64(c.value)
    else:
        if not isinstance(c.value, int):
            raise TypeError(f"a {c.target} compare needs an int")
        body[_TARGET_FIELDS[c.target]] = str(c.value)
    if c.range_end is not None:
        body["range_end"] = _b64(c.range_end)
    return body


def _op_json(op: TxnOp) -> dict[str, Any]:
    if isinstance(op, Put):
        put: dict[str, Any] = {"key": _b64(op.key), "value": _b64(op.value)}
        if op.lease:
            put["lease"] = str(op.lease)
        return {"request_put": put}
    if isinstance(op, Delete):
        return {"request_delete_range": _range(op.key, op.prefix)}
    if isinstance(op, Count):
        return {"request_range": {**_range(op.key, op.prefix), "count_only": True}}
    body = _range(op.key, op.prefix)
    if op.keys_only:
        body["keys_only"] = True
    if op.min_mod_revision:
        body["min_mod_revision"] = str(op.min_mod_revision)
    return {"request_range": body}


def _op_response(op: TxnOp, raw: Mapping[str, Any]) -> TxnResponse:
    if isinstance(op, Put):
        return None
    if isinstance(op, Delete):
        return int(raw.get("response_delete_range", {}).get("deleted", 0))
    body = raw.get("response_range", {})
    if isinstance(op, Count):
        return int(body.get("count", 0))
    return [_keyvalue(kv) for kv in body.get("kvs", [])]


def _error_body(exc: gw_exceptions.Etcd3Exception) -> dict[str, Any]:
    """The gateway's JSON error ({error, message, code}), or {} for other failures."""
    try:
        body = json.loads(exc.detail_text or "")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_text(exc: gw_exceptions.Etcd3Exception) -> str:
    body = _error_body(exc)
    text = body.get("message") or exc.detail_text or str(exc) or type(exc).__name__
    return str(text)[:300]


def _mapped_error(exc: gw_exceptions.Etcd3Exception) -> KvstoreError:
    text = _error_text(exc)
    if _error_body(exc).get("code") == _GRPC_NOT_FOUND and "lease not found" in text:
        return LeaseNotFound(text)
    return KvstoreError(text)


class Etcd:
    """One etcd cluster reached through any of `endpoints` (fail-over in order, sticking
    to the last one that answered). A mutation retried on the next endpoint after a lost
    connection may have been applied once already: every caller here is written so that
    a repeat is harmless (puts and deletes are idempotent, creates re-read on failure)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = 5.0,
        on_operation: OperationHook | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self._on_operation = on_operation
        self._clients = [self._client(url) for url in self.endpoints]
        self._preferred = 0
        self._closed = False

    def _client(self, url: str) -> Etcd3Client:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"unsupported etcd endpoint {url!r} (http://HOST:PORT)")
        # etcd3gw types its session as a requests.Session; with `api_path` given it only
        # ever calls post() and close(), which GatewaySession provides (see transport.py).
        session = cast(requests.Session, GatewaySession(url, pool_size=_POOL_SIZE))
        return Etcd3Client(
            host=parts.hostname,
            port=parts.port or 2379,
            timeout=self.timeout,
            api_path="/v3/",
            session=session,
        )

    def _record(self, action: str, outcome: str) -> None:
        if self._on_operation is not None:
            self._on_operation(action, outcome)

    def _ordered(self) -> list[int]:
        first = self._preferred
        return [(first + i) % len(self._clients) for i in range(len(self._clients))]

    def _post(self, action: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST to the first endpoint that answers; every error becomes a KvstoreError."""
        failures: list[str] = []
        for idx in self._ordered():
            client = self._clients[idx]
            try:
                result = client.post(client.get_url(path), json=body)
            except _UNREACHABLE as exc:
                failures.append(f"{self.endpoints[idx]}: {_error_text(exc)}")
                continue
            except gw_exceptions.Etcd3Exception as exc:
                self._record(action, "fail")
                raise _mapped_error(exc) from exc
            except (requests.RequestException, ValueError) as exc:
                self._record(action, "fail")
                raise KvstoreError(f"{action}: {exc}") from exc
            self._preferred = idx
            self._record(action, "success")
            return dict(result)
        self._record(action, "unavailable")
        raise KvstoreUnavailable(
            f"etcd unreachable at {', '.join(self.endpoints)} ({'; '.join(failures)})"
        )

    # -- keys --------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        """The key, or None."""
        result = self._post("get", "kv/range", _range(key, False))
        kvs = result.get("kvs", [])
        return _keyvalue(kvs[0]) if kvs else None

    def list_prefix(self, prefix: str, keys_only: bool = False) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` (sorted) and the store revision of that read."""
        body = _range(prefix, True)
        if keys_only:
            body["keys_only"] = True
        result = self._post("list", "kv/range", body)
        return [_keyvalue(kv) for kv in result.get("kvs", [])], _header_revision(result)

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write the key; returns the revision of the write."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return _header_revision(self._post("put", "kv/put", body))

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        """Write the key only if it does not exist; True if written."""
        result = self.txn([Compare(key, "version", "==", 0)], [Put(key, value, lease)])
        return result.succeeded

    def delete(self, key: str) -> bool:
        """Delete the key; True if it existed."""
        result = self._post("delete", "kv/deleterange", _range(key, False))
        return int(result.get("deleted", 0)) > 0

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix`; returns how many there were."""
        result = self._post("delete", "kv/deleterange", _range(prefix, True))
        return int(result.get("deleted", 0))

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """If every compare holds run `success`, else `failure`, atomically."""
        body = {
            "compare": [_compare_json(c) for c in compare],
            "success": [_op_json(op) for op in success],
            "failure": [_op_json(op) for op in failure],
        }
        result = self._post("txn", "kv/txn", body)
        succeeded = bool(result.get("succeeded", False))
        ops = success if succeeded else failure
        raw = result.get("responses", [])
        return TxnResult(
            succeeded=succeeded,
            revision=_header_revision(result),
            responses=[_op_response(op, r) for op, r in zip(ops, raw, strict=True)],
        )

    def compact(self, revision: int) -> None:
        """Drop the history before `revision` (watches from older revisions then fail)."""
        self._post("compact", "kv/compaction", {"revision": str(revision), "physical": True})

    # -- leases ------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; returns its id."""
        result = self._post("lease-grant", "lease/grant", {"TTL": ttl, "ID": 0})
        return int(result["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh the lease; its remaining TTL, 0 when it no longer exists."""
        result = self._post("lease-keepalive", "lease/keepalive", {"ID": str(lease)})
        return max(0, int(result.get("result", {}).get("TTL", 0)))

    def revoke(self, lease: int) -> None:
        """End the lease now (its keys are deleted); a lease already gone is fine."""
        try:
            self._post("lease-revoke", "kv/lease/revoke", {"ID": str(lease)})
        except LeaseNotFound:
            return

    # -- cluster -----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The answering member's status: endpoint, version, dbSize, leader, raftTerm and
        the store's revision."""
        result = self._post("status", "maintenance/status", {})
        return {
            "endpoint": self.endpoints[self._preferred],
            "version": result.get("version", ""),
            "dbSize": int(result.get("dbSize", 0)),
            "leader": result.get("leader", ""),
            "raftTerm": int(result.get("raftTerm", 0)),
            "revision": _header_revision(result),
        }

    def healthy(self) -> bool:
        """True when a member answers and knows a leader."""
        try:
            return bool(self.status()["leader"])
        except KvstoreError:
            return False

    # -- watches -----------------------------------------------------------

    def watch_prefix(
        self,
        prefix: str,
        start_revision: int,
        on_event: Callable[[list[WatchEvent]], None],
        on_lost: Callable[[str], None],
    ) -> Watch:
        """Stream the changes under `prefix` from `start_revision` on a thread of its own.

        `on_event` gets the events of each watch response in order; `on_lost(reason)` is
        called once when the watch ends other than by `cancel()` (history compacted,
        stream closed, etcd gone). Raises KvstoreUnavailable if no endpoint accepts it.
        """
        request = {
            "create_request": {
                **_range(prefix, True),
                "start_revision": str(max(start_revision, 0)),
            }
        }
        failures: list[str] = []
        for idx in self._ordered():
            try:
                stream = Stream.open(self.endpoints[idx], "/v3/watch", request, self.timeout)
            except OSError as exc:
                failures.append(f"{self.endpoints[idx]}: {exc}")
                continue
            self._preferred = idx
            self._record("watch", "success")
            return Watch(stream, prefix, on_event, on_lost)
        self._record("watch", "unavailable")
        raise KvstoreUnavailable(
            f"etcd unreachable at {', '.join(self.endpoints)} ({'; '.join(failures)})"
        )

    def close(self) -> None:
        """Close the HTTP sessions (watches are cancelled by their owners)."""
        if self._closed:
            return
        self._closed = True
        for client in self._clients:
            client.session.close()


def _watch_event(raw: Mapping[str, Any]) -> WatchEvent:
    kv = raw["kv"]
    deleted = raw.get("type") == "DELETE"
    return WatchEvent(
        type="delete" if deleted else "put",
        key=_key_from(kv["key"]),
        value=None if deleted else _unb64(kv.get("value", "")),
        mod_revision=int(kv.get("mod_revision", 0)),
        create_revision=int(kv.get("create_revision", 0)),
        version=int(kv.get("version", 0)),
        lease=int(kv.get("lease", 0)),
    )


def _watch_end(message: Mapping[str, Any]) -> str:
    """Why a watch response ends the watch (error, compaction, cancel), or ""."""
    if "error" in message:
        error = message["error"]
        return f"watch error: {error.get('message', error)}"
    result = message.get("result", {})
    compacted = int(result.get("compact_revision", 0))
    if compacted:
        return f"compacted at revision {compacted}"
    if result.get("canceled"):
        return f"watch canceled by etcd: {result.get('cancel_reason', 'no reason given')}"
    return ""


class Watch:
    """A running watch; `cancel()` ends it without calling `on_lost`."""

    def __init__(
        self,
        stream: Stream,
        prefix: str,
        on_event: Callable[[list[WatchEvent]], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self._stream = stream
        self._on_event = on_event
        self._on_lost = on_lost
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {prefix}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            reason = self._read()
        except (OSError, ValueError, KeyError) as exc:
            reason = f"watch stream failed: {exc}"
        except Exception as exc:  # a callback failed: the consumer must resync
            log.exception("watch callback failed")
            reason = f"watch callback failed: {exc}"
        finally:
            self._stream.close()
        if not self._cancelled.is_set():
            self._on_lost(reason)

    def _read(self) -> str:
        """Deliver events until the stream ends; returns why. The events of responses
        that arrived together are delivered as one batch (one hand-over to the consumer
        per batch, not per response: under load that is most of a watch's CPU)."""
        batch: list[WatchEvent] = []
        reason = "cancelled"
        while not self._cancelled.is_set():
            if batch and not self._stream.line_ready():
                self._on_event(batch)
                batch = []
                continue
            line = self._stream.readline()
            if not line:
                reason = "watch stream closed by etcd"
                break
            if not line.strip():
                continue
            message = json.loads(line)
            ended = _watch_end(message)
            if ended:
                reason = ended
                break
            batch.extend(_watch_event(e) for e in message.get("result", {}).get("events", ()))
        if batch and not self._cancelled.is_set():
            self._on_event(batch)
        return reason

    def cancel(self) -> None:
        """Stop the watch; waits for its thread unless called from a callback."""
        self._cancelled.set()
        self._stream.shutdown()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)


# -- Reflector ------------------------------------------------------------------

SyncCallback = Callable[[dict[str, KeyValue]], None]
ChangeCallback = Callable[[dict[str, KeyValue], set[str], int], None]

_PROBE_AFTER = 0.2


class Backoff:
    """Exponential delays with jitter between `low` and `high` seconds."""

    def __init__(self, low: float = 0.2, high: float = 5.0) -> None:
        self.low = low
        self.high = high
        self._next = low

    def next(self) -> float:
        delay = self._next
        self._next = min(self.high, self._next * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.low


class Reflector:
    """Keeps a prefix mirrored: list, `on_sync(full snapshot)`, then watch from the list
    revision + 1 with `on_change(upserts, deletes, revision)` per change. When the watch
    is lost (compaction, error, etcd down) it waits with bounded backoff and lists again;
    keys that vanished meanwhile are absent from that snapshot (consumers diff).

    Callbacks run on the reflector's daemon thread, one at a time; a callback that raises
    forces a resync. `revision` is the last applied revision.
    """

    def __init__(
        self,
        etcd: Etcd,
        prefix: str,
        on_sync: SyncCallback,
        on_change: ChangeCallback,
        *,
        retry_min: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self._on_sync = on_sync
        self._on_change = on_change
        self._backoff = Backoff(retry_min, retry_max)
        self._cond = threading.Condition()
        self._revision = 0
        self._synced = False
        self._generation = 0
        self._keys: dict[str, int] = {}
        self._last_error = ""
        self._stop = threading.Event()
        self._retry = threading.Event()
        self._queue: queue.SimpleQueue[tuple[int, list[WatchEvent] | str | None]] = (
            queue.SimpleQueue()
        )
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def last_error(self) -> str:
        return self._last_error

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"reflector {self.prefix}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._retry.set()
        self._queue.put((-1, None))
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def retry_now(self) -> None:
        """While out of sync, list again now instead of at the end of the backoff."""
        self._retry.set()

    def wait_synced(self, timeout: float) -> bool:
        """Block until the first (or current) listing has been applied."""
        with self._cond:
            return self._cond.wait_for(lambda: self._synced, timeout)

    def wait_for(self, revision: int, timeout: float) -> bool:
        """Block until every change up to `revision` has been applied under the prefix.

        Writes elsewhere in the store produce no event here, so after a short wait it
        checks the store: no key changed after the applied revision and as many keys
        as it holds means nothing under the prefix changed up to the store's revision.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                remaining = deadline - time.monotonic()
                if self._revision >= revision:
                    return True
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, _PROBE_AFTER))
                if self._revision >= revision:
                    return True
            self._probe()

    def _probe(self) -> None:
        with self._cond:
            if not self._synced:
                return
            applied, count, generation = self._revision, len(self._keys), self._generation
        try:
            result = self.etcd.txn(
                [],
                [
                    Count(self.prefix, prefix=True),
                    Get(self.prefix, prefix=True, keys_only=True, min_mod_revision=applied + 1),
                ],
            )
        except KvstoreError:
            return
        total, newer = result.responses
        if total == count and not newer:
            with self._cond:
                if self._generation == generation and self._synced:
                    self._revision = max(self._revision, result.revision)
                    self._cond.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            reason = self._cycle()
            if self._stop.is_set():
                break
            with self._cond:
                self._synced = False
                self._last_error = reason
            delay = self._backoff.next()
            log.warning("%s: %s; resyncing in %.1fs", self.prefix, reason, delay)
            self._retry.wait(delay)
            self._retry.clear()

    def _cycle(self) -> str:
        """List, sync, watch and apply until the watch is lost; returns why."""
        try:
            kvs, revision = self.etcd.list_prefix(self.prefix)
        except KvstoreError as exc:
            return str(exc)
        snapshot = {kv.key: kv for kv in kvs}
        try:
            self._on_sync(snapshot)
        except Exception as exc:
            log.exception("%s: sync callback failed", self.prefix)
            return f"sync callback failed: {exc}"
        with self._cond:
            self._generation += 1
            generation = self._generation
            self._keys = {kv.key: kv.mod_revision for kv in kvs}
            self._revision = revision
            self._synced = True
            self._last_error = ""
            self._cond.notify_all()
        try:
            watch = self.etcd.watch_prefix(
                self.prefix,
                revision + 1,
                lambda events: self._queue.put((generation, events)),
                lambda why: self._queue.put((generation, why)),
            )
        except KvstoreError as exc:
            return str(exc)
        self._backoff.reset()
        try:
            return self._pump(generation)
        finally:
            watch.cancel()

    def _pump(self, generation: int) -> str:
        held: tuple[int, list[WatchEvent] | str | None] | None = None
        while True:
            tag, item = held if held is not None else self._queue.get()
            held = None
            if item is None:
                return "stopped"
            if tag != generation:
                continue
            if isinstance(item, str):
                return item
            events = item
            while True:  # what this watch queued meanwhile is applied as one change
                try:
                    held = self._queue.get_nowait()
                except queue.Empty:
                    break
                if held[0] != generation or not isinstance(held[1], list):
                    break
                events = [*events, *held[1]]
                held = None
            try:
                self._apply(events)
            except Exception as exc:
                log.exception("%s: change callback failed", self.prefix)
                return f"change callback failed: {exc}"

    def _apply(self, events: list[WatchEvent]) -> None:
        upserts: dict[str, KeyValue] = {}
        deletes: set[str] = set()
        revision = self._revision
        for event in events:
            revision = max(revision, event.mod_revision)
            if event.type == "put":
                deletes.discard(event.key)
                upserts[event.key] = KeyValue(
                    key=event.key,
                    value=event.value or b"",
                    mod_revision=event.mod_revision,
                    create_revision=event.create_revision,
                    version=event.version,
                    lease=event.lease,
                )
            else:
                upserts.pop(event.key, None)
                deletes.add(event.key)
        self._on_change(upserts, deletes, revision)
        with self._cond:
            for key, kv in upserts.items():
                self._keys[key] = kv.mod_revision
            for key in deletes:
                self._keys.pop(key, None)
            self._revision = max(self._revision, revision)
            self._cond.notify_all()


class MirrorView:
    """What a watcher built on a `Reflector` (in `_reflector`) shows of it: start, stop,
    and its revision, sync state and last error for `cilia status`."""

    _reflector: Reflector

    def start(self) -> None:
        """List, then watch, in the background."""
        self._reflector.start()

    def stop(self) -> None:
        """Stop watching."""
        self._reflector.stop()

    def wait_for(self, revision: int, timeout: float) -> bool:
        """True once the callbacks have seen the store at `revision` or later."""
        return self._reflector.wait_for(revision, timeout)

    @property
    def revision(self) -> int:
        """The store revision the mirror is at."""
        return self._reflector.revision

    @property
    def synced(self) -> bool:
        """True while the mirror follows the store (listed and watching)."""
        return self._reflector.synced

    @property
    def last_error(self) -> str:
        """Why the watch last failed ("" once it has listed again)."""
        return self._reflector.last_error
