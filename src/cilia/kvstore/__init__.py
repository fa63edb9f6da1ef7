"""Cluster state shared through etcd: the client, the node's lease, and what the nodes
publish (identities, nodes, ipcache, objects)."""

from cilia.kvstore.client import (
    Compare,
    Count,
    Delete,
    Etcd,
    Get,
    KeyValue,
    KvstoreError,
    KvstoreUnavailable,
    LeaseNotFound,
    Put,
    Reflector,
    TxnResult,
    Watch,
    WatchEvent,
    prefix_end,
)
from cilia.kvstore.identities import ClusterIdentityAllocator
from cilia.kvstore.session import NodeSession

__all__ = [
    "ClusterIdentityAllocator",
    "Compare",
    "Count",
    "Delete",
    "Etcd",
    "Get",
    "KeyValue",
    "KvstoreError",
    "KvstoreUnavailable",
    "LeaseNotFound",
    "NodeSession",
    "Put",
    "Reflector",
    "TxnResult",
    "Watch",
    "WatchEvent",
    "prefix_end",
]
