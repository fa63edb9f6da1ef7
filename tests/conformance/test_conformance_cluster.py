"""Conformance on a cluster: every case of cases/ (see `suite.py`), with the same tables,
on the 9 pods spread over the shared 3-node cluster (`cluster_world.py`)."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import ClusterHandle
from tests.conformance.cluster_world import ClusterWorld
from tests.conformance.suite import CASE_IDS, CASES, run_case

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]


@pytest.fixture(scope="module")
def world(
    cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterWorld]:
    w = ClusterWorld(cluster, tmp_path_factory.mktemp("conformance-cluster"), secrets.token_hex(3))
    try:
        w.setup(sys.executable)
        yield w
    finally:
        left = w.teardown()
        assert left == [], f"left behind: {left}"


def test_pods_spread_over_every_node(world: ClusterWorld) -> None:
    pods = world.home.request("GET", "/objects/pods")
    nodes = {f"{p['namespace']}/{p['name']}": p["node"] for p in pods}
    assert {ref: nodes.get(ref) for ref in world.placement} == world.placement
    assert set(world.placement.values()) == set(world.cluster.nodes)


@pytest.mark.parametrize("path", CASES, ids=CASE_IDS)
def test_case(world: ClusterWorld, path: Path) -> None:
    run_case(world, path)
