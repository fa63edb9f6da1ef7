"""`cilia config --agent` in a cluster: a node's pod range comes from the kvstore."""

from __future__ import annotations

import ipaddress

import pytest

from tests.cluster.harness import ClusterHandle

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]


def test_each_node_reports_its_pod_range_from_the_kvstore(cluster: ClusterHandle) -> None:
    cluster_range = None
    for node in cluster.nodes:
        settings = cluster.run(node, "config", "--agent", "-o", "json").json()
        cluster_range = ipaddress.IPv4Network(settings["cluster-pod-cidr"]["value"])
        pod_cidr = settings["pod-cidr"]
        assert pod_cidr["source"] == "kvstore", pod_cidr
        assert ipaddress.IPv4Network(pod_cidr["value"]).subnet_of(cluster_range)
        assert settings["cluster-pod-cidr"]["source"] == "flag --cluster-pod-cidr"
        assert settings["kvstore"]["value"] == "etcd"
