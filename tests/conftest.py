"""Fixtures shared by every test folder.

`cluster`: one `cilia cluster up --nodes 3` per test session (short leases), used by the
cluster tests and by the conformance suite's cluster run; removed at the end and
checked to leave nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.harness import ClusterHandle, running_cluster

NODES = 3
LEASE_TTL = 4
LEASE_KEEPALIVE = 1


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    """A 3-node cluster (etcd, node namespaces on an underlay bridge, one agent each),
    with its own CILIA_CLUSTER_DIR; its logs are kept in a `cluster-logs` temp folder.
    A test that stops one of its agents or its etcd must bring it back before it ends."""
    base = tmp_path_factory.mktemp("cluster")
    with running_cluster(
        base / "c",
        f"--nodes={NODES}",
        f"--lease-ttl={LEASE_TTL}",
        f"--lease-keepalive={LEASE_KEEPALIVE}",
        logs=base / "logs",
    ) as handle:
        yield handle
