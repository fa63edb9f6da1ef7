"""Fixtures shared by every test folder.

`cluster`: one `cilia cluster up --nodes 3` per test session (short leases, dual-stack
agents), used by the cluster tests and by the conformance suite's cluster run; removed
at the end and checked to leave nothing behind.

Hypothesis profiles: `ci` (the default: 100 examples per property, no deadline) and
`long` (20,000), chosen with `--hypothesis-profile=long` or `HYPOTHESIS_PROFILE=long`.
Properties leave `max_examples` to the profile (the agent fuzz test takes a quarter).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.cluster.harness import ClusterHandle, running_cluster

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("long", settings.get_profile("ci"), max_examples=20_000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

NODES = 3
LEASE_TTL = 4
LEASE_KEEPALIVE = 1


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    """A 3-node cluster (etcd, node namespaces on an underlay bridge, one dual-stack
    agent each: pods get IPv4 and IPv6), with its own CILIA_CLUSTER_DIR; its logs are
    kept in a `cluster-logs` temp folder. A test that stops one of its agents or its
    etcd must bring it back before it ends."""
    base = tmp_path_factory.mktemp("cluster")
    with running_cluster(
        base / "c",
        f"--nodes={NODES}",
        f"--lease-ttl={LEASE_TTL}",
        f"--lease-keepalive={LEASE_KEEPALIVE}",
        "--agent-arg=--enable-ipv6=true",
        logs=base / "logs",
    ) as handle:
        yield handle
