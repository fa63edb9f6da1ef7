"""Cluster nodes in etcd: each node's record, its pod range, and a mirror of all nodes.

Layout (every key under the node's lease, so a node that dies disappears with its lease):

- `cilia/state/nodes/v1/default/<node>` -> `NodeInfo` as JSON (`Name`, `Cluster`,
  `UnderlayIP` = the tunnel endpoint, `IPv4AllocCIDR` = the pod range, `IPv4RouterIP` = the
  node's router address in it, `IPv6AllocCIDR` = its IPv6 pod range when IPv6 is on,
  `Heartbeat` in epoch seconds and the `HeartbeatInterval` it is refreshed at).
- `cilia/state/podcidrs/v1/<a.b.c.d>-<len>` -> the owning node's name. Ranges are claimed
  with create-only transactions, so two nodes never get the same one.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cilia.kvstore.client import (
    Compare,
    Delete,
    Etcd,
    KeyValue,
    KvstoreError,
    KvstoreUnavailable,
    LeaseNotFound,
    Put,
    Reflector,
)
from cilia.kvstore.session import NodeSession
from cilia.router import router_ip, router_ip_problem

log = logging.getLogger(__name__)

NODES_PREFIX = "cilia/state/nodes/v1/default/"
PODCIDRS_PREFIX = "cilia/state/podcidrs/v1/"
STALE_AFTER_INTERVALS = 3
"""A node whose heartbeat is older than this many of its intervals shows as stale."""

Health = Literal["ok", "stale"]


class NodeInfo(BaseModel):
    """What the cluster knows of a node (the JSON value of its key)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    name: str = Field(alias="Name")
    cluster: str = Field("default", alias="Cluster")
    underlay_ip: str = Field(alias="UnderlayIP", description="the node's tunnel endpoint")
    pod_cidr: str = Field(alias="IPv4AllocCIDR", description="the node's pod range")
    router_ip: str = Field(
        "", alias="IPv4RouterIP", description="the node's router address (empty: its default)"
    )
    ipv6_cidr: str = Field("", alias="IPv6AllocCIDR", description='IPv6 pod range ("": none)')
    heartbeat: float = Field(0.0, alias="Heartbeat", description="epoch seconds")
    heartbeat_interval: float = Field(10.0, alias="HeartbeatInterval", gt=0)

    @field_validator("underlay_ip")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        return str(ipaddress.IPv4Address(value))

    @field_validator("pod_cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        return str(ipaddress.IPv4Network(value, strict=True))

    @field_validator("ipv6_cidr")
    @classmethod
    def _cidr6(cls, value: str) -> str:
        return str(ipaddress.IPv6Network(value, strict=True)) if value else ""

    @model_validator(mode="after")
    def _router_in_range(self) -> NodeInfo:
        if self.router_ip and (problem := router_ip_problem(self.pod_cidr, self.router_ip)):
            raise ValueError(f"IPv4RouterIP: {problem}")
        return self

    @property
    def router(self) -> str:
        """The node's router address towards its pods."""
        return router_ip(self.pod_cidr, self.router_ip)

    @property
    def router6(self) -> str:
        """The node's IPv6 router address ("" without an IPv6 range)."""
        return router_ip(self.ipv6_cidr) if self.ipv6_cidr else ""

    def to_json(self) -> bytes:
        """The stored value."""
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> NodeInfo:
        """Decode a stored value; raises ValueError when it is not a node."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ValueError(str(exc)) from None

    def health(self, now: float | None = None) -> Health:
        """For display: "ok" while the heartbeat is recent, else "stale"."""
        age = (time.time() if now is None else now) - self.heartbeat
        return "ok" if age < STALE_AFTER_INTERVALS * self.heartbeat_interval else "stale"


class PodCidrError(RuntimeError):
    """Every pod range of the cluster range is taken."""


def node_key(name: str, root: str = "") -> str:
    """The key of a node's record."""
    return f"{root}{NODES_PREFIX}{name}"


def pod_cidr_key(cidr: str, root: str = "") -> str:
    """The key of a claimed pod range: `.../10.208.3.0-24`."""
    net = ipaddress.IPv4Network(cidr, strict=True)
    return f"{root}{PODCIDRS_PREFIX}{net.network_address}-{net.prefixlen}"


def _cidr_of_key(key: str, prefix: str) -> ipaddress.IPv4Network | None:
    address, _, length = key.removeprefix(prefix).partition("-")
    try:
        return ipaddress.IPv4Network(f"{address}/{length}", strict=True)
    except ValueError:
        return None


def _take(etcd: Etcd, key: str, node: str, lease: int) -> bool:
    """Claim `key` for `node` under `lease`: create it, or re-attach it when already ours."""
    value = node.encode()
    put = Put(key, value, lease)
    if etcd.txn([Compare(key, "create", "==", 0)], [put]).succeeded:
        return True
    return etcd.txn([Compare(key, "value", "==", value)], [put]).succeeded


def claim_pod_cidr(
    etcd: Etcd,
    session: NodeSession,
    node: str,
    cluster_cidr: str,
    prefix_len: int,
    preferred: str | None = None,
    root: str = "",
) -> str:
    """Claim a /`prefix_len` of `cluster_cidr` for `node` under its lease; returns it.

    `preferred` (the range the node used before) is taken when free or already the node's;
    otherwise a range the node still owns, otherwise the lowest free one. Other claims the
    node holds are released. Raises PodCidrError when every range is taken.
    """
    lease = session.lease
    if not lease:
        raise KvstoreUnavailable("no etcd lease yet: the pod range cannot be claimed")
    cluster = ipaddress.IPv4Network(cluster_cidr, strict=True)
    if not cluster.prefixlen <= prefix_len <= 30:
        raise ValueError(f"pod range size /{prefix_len} does not fit cluster range {cluster}")
    prefix = f"{root}{PODCIDRS_PREFIX}"
    owners: dict[ipaddress.IPv4Network, str] = {}
    for kv in etcd.list_prefix(prefix)[0]:
        net = _cidr_of_key(kv.key, prefix)
        if net is not None and net.overlaps(cluster):
            owners[net] = kv.value.decode(errors="replace")
    first = [ipaddress.IPv4Network(preferred, strict=True)] if preferred else []
    first += sorted(net for net, owner in owners.items() if owner == node)
    fitting = [n for n in first if n.prefixlen == prefix_len and n.subnet_of(cluster)]
    for net in itertools.chain(fitting, cluster.subnets(new_prefix=prefix_len)):
        if any(owner != node and net.overlaps(other) for other, owner in owners.items()):
            continue
        if _take(etcd, pod_cidr_key(str(net), root), node, lease):
            _release_others(etcd, node, net, owners, root)
            return str(net)
        owners[net] = "?"  # lost a race for it
    raise PodCidrError(
        f"cluster pod range {cluster} has no free /{prefix_len} left for node {node!r} "
        f"({len(owners)} claimed)"
    )


def _release_others(
    etcd: Etcd,
    node: str,
    kept: ipaddress.IPv4Network,
    owners: dict[ipaddress.IPv4Network, str],
    root: str,
) -> None:
    for net, owner in owners.items():
        if owner == node and net != kept:
            key = pod_cidr_key(str(net), root)
            etcd.txn([Compare(key, "value", "==", node.encode())], [Delete(key)])


class NodeRegistry:
    """Publishes the local node, keeps its heartbeat fresh and mirrors every node.

    `on_change` gets the full map of nodes after every (re-)list and whenever a node joins,
    leaves (lease expiry or clean leave) or changes address or pod range; heartbeat-only
    updates are not reported (`nodes()` always has the latest ones). A new lease
    re-attaches the pod range and re-publishes the node; if another node took the range
    meanwhile, `error` says so.
    """

    def __init__(
        self,
        etcd: Etcd,
        session: NodeSession,
        local: NodeInfo,
        heartbeat_interval: float,
        on_change: Callable[[dict[str, NodeInfo]], None],
        root: str = "",
    ) -> None:
        self._etcd = etcd
        self._session = session
        self._local = local.model_copy(update={"heartbeat_interval": heartbeat_interval})
        self._interval = heartbeat_interval
        self._on_change = on_change
        self._root = root
        self._prefix = f"{root}{NODES_PREFIX}"
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeInfo] = {}
        self._publishing = threading.Lock()
        self._attached = 0
        """The lease the pod range key was last attached to."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        """Why the node's records could not be kept (None when they are)."""
        self._reflector = Reflector(etcd, self._prefix, self._synced, self._changed)

    @property
    def local(self) -> NodeInfo:
        """The local node as last published."""
        return self._local

    def start(self) -> None:
        """Publish the local node, then mirror the cluster and heartbeat in the background."""
        self._session.on_new_lease(self._new_lease)
        self._heartbeat()
        self._reflector.start()
        self._thread = threading.Thread(target=self._beat, name="node-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, leave: bool = False) -> None:
        """Stop mirroring and heartbeating; `leave` also deletes the node's keys now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._reflector.stop()
        if leave:
            me = self._local.name.encode()
            cidr = pod_cidr_key(self._local.pod_cidr, self._root)
            self._etcd.txn([Compare(cidr, "value", "==", me)], [Delete(cidr)])
            self._etcd.delete(node_key(self._local.name, self._root))

    def nodes(self) -> dict[str, NodeInfo]:
        """Every node of the cluster, the local one included, by name."""
        with self._lock:
            return dict(self._nodes)

    def _new_lease(self, _lease: int) -> None:
        if not self._stop.is_set():  # a node that left stays gone
            self._heartbeat()

    def _heartbeat(self) -> None:
        """Write the node's record; first re-attach its pod range when the lease changed."""
        with self._publishing:
            lease = self._session.lease
            if not lease:  # none yet: the new-lease callback publishes
                return
            try:
                if lease != self._attached:
                    self._attach(lease)
                self._local = self._local.model_copy(update={"heartbeat": time.time()})
                key = node_key(self._local.name, self._root)
                self._etcd.put(key, self._local.to_json(), lease)
            except LeaseNotFound:
                self._session.lease_lost(lease)
                raise

    def _attach(self, lease: int) -> None:
        key = pod_cidr_key(self._local.pod_cidr, self._root)
        if _take(self._etcd, key, self._local.name, lease):
            self.error = None
        else:
            self.error = (
                f"pod range {self._local.pod_cidr} was claimed by another node while this "
                "node's lease was lost"
            )
            log.error("%s", self.error)
        self._attached = lease

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._heartbeat()
            except KvstoreError as exc:
                log.warning("node heartbeat not written: %s", exc)

    def _decode(self, kv: KeyValue) -> NodeInfo | None:
        name = kv.key.removeprefix(self._prefix)
        try:
            info = NodeInfo.from_json(kv.value)
        except ValueError as exc:
            log.warning("ignoring undecodable node record %s: %s", kv.key, exc)
            return None
        if info.name != name:
            log.warning("ignoring node record %s naming another node %r", kv.key, info.name)
            return None
        return info

    def _synced(self, snapshot: dict[str, KeyValue]) -> None:
        decoded = (self._decode(kv) for kv in snapshot.values())
        nodes = {info.name: info for info in decoded if info is not None}
        with self._lock:
            self._nodes = nodes
        self._on_change(dict(nodes))

    def _changed(self, upserts: dict[str, KeyValue], deletes: set[str], _revision: int) -> None:
        with self._lock:
            before = dict(self._nodes)
            for key in deletes:
                self._nodes.pop(key.removeprefix(self._prefix), None)
            for kv in upserts.values():
                info = self._decode(kv)
                if info is not None:
                    self._nodes[info.name] = info
            nodes = dict(self._nodes)
        if _routes(before) != _routes(nodes):
            self._on_change(nodes)


def _routes(nodes: dict[str, NodeInfo]) -> dict[str, tuple[str, str, str]]:
    """What on_change reports changes of: each node's underlay address and pod range."""
    return {name: (n.underlay_ip, n.pod_cidr, n.ipv6_cidr) for name, n in nodes.items()}
