"""The shared cluster: one `cilia cluster up --nodes 3` per test session (short leases),
removed at the end and checked to leave nothing behind. Cluster tests take `cluster`.

The same skips as the integration tests apply (root, clang-19).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.harness import ClusterHandle, running_cluster
from tests.integration.conftest import pytest_collection_modifyitems, pytest_configure

__all__ = ["cluster", "pytest_collection_modifyitems", "pytest_configure"]

NODES = 3
LEASE_TTL = 4
LEASE_KEEPALIVE = 1


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    """A 3-node cluster (etcd, node namespaces on an underlay bridge, one agent each),
    with its own CILIA_CLUSTER_DIR; its logs are kept in a `cluster-logs` temp folder."""
    base = tmp_path_factory.mktemp("cluster")
    with running_cluster(
        base / "c",
        f"--nodes={NODES}",
        f"--lease-ttl={LEASE_TTL}",
        f"--lease-keepalive={LEASE_KEEPALIVE}",
        logs=base / "logs",
    ) as handle:
        yield handle
