"""Merging the probe matrices of several nodes, and finding the probes nobody made."""

from __future__ import annotations

from typing import Any

from cilia.cli.matrix import merge, missing


def answer(sources: list[str], pods: list[str], elapsed: float, denied: str = "") -> dict[str, Any]:
    """One agent's /probe/matrix answer on port 80/TCP (`denied`: the one denied target)."""
    results = [
        {
            "from": s,
            "to": d,
            "port": 80,
            "protocol": "TCP",
            "result": "denied" if d == denied else "allowed",
        }
        for s in sources
        for d in pods
    ]
    return {"pods": pods, "sources": sources, "results": results, "elapsed_seconds": elapsed}


def test_merge_takes_each_node_rows_tagged_with_the_node() -> None:
    pods = ["x/a", "x/b", "x/c"]
    merged = merge(
        {
            "node2": answer(["x/b"], pods, 0.5, denied="x/a"),
            "node1": answer(["x/a", "x/c"], pods, 0.7),
        }
    )
    assert merged["pods"] == pods
    assert merged["sources"] == {"node2": ["x/b"], "node1": ["x/a", "x/c"]}
    assert merged["elapsed_seconds"] == 0.7
    assert [(r["from"], r["to"], r["node"]) for r in merged["results"]] == [
        ("x/a", "x/a", "node1"),
        ("x/a", "x/b", "node1"),
        ("x/a", "x/c", "node1"),
        ("x/b", "x/a", "node2"),
        ("x/b", "x/b", "node2"),
        ("x/b", "x/c", "node2"),
        ("x/c", "x/a", "node1"),
        ("x/c", "x/b", "node1"),
        ("x/c", "x/c", "node1"),
    ]
    assert (
        next(r for r in merged["results"] if r["from"] == "x/b" and r["to"] == "x/a")["result"]
        == "denied"
    )
    assert missing(merged["results"], pods, pods, [80], ["TCP"]) == []


def test_a_pair_reported_twice_counts_once() -> None:
    merged = merge(
        {
            "node1": answer(["x/a"], ["x/a", "x/b"], 0.1),
            "node2": answer(["x/a"], ["x/a", "x/b"], 0.1, denied="x/b"),
        }
    )
    assert [(r["to"], r["result"], r["node"]) for r in merged["results"]] == [
        ("x/a", "allowed", "node1"),
        ("x/b", "allowed", "node1"),
    ]


def test_missing_names_sources_nobody_probed_and_unknown_pods() -> None:
    merged = merge(
        {
            "node1": answer(["x/a"], ["x/a", "x/b"], 0.1),
            "node2": answer([], ["x/a", "x/b", "x/c"], 0.0),
        }
    )
    gaps = missing(merged["results"], merged["pods"], merged["pods"], [80], ["TCP", "UDP"])
    assert ("x/a", "x/c", 80, "TCP", 4) in gaps  # node1 did not know x/c
    assert ("x/a", "x/a", 80, "UDP", 4) in gaps  # nobody probed UDP
    assert {g[0] for g in gaps} == {"x/a", "x/b", "x/c"}
    assert len(gaps) == 3 * 3 * 2 - 2
    assert missing(merged["results"], ["x/a"], ["x/a", "x/b"], [80], ["TCP"]) == []


def test_a_family_nobody_probed_is_missing() -> None:
    rows = [
        {"from": "x/a", "to": "x/b", "port": 80, "protocol": "TCP", "result": "allowed"},
        {"from": "x/a", "to": "x/b", "port": 80, "protocol": "TCP", "family": 6, "result": "x"},
    ]
    assert missing(rows, ["x/a"], ["x/b"], [80], ["TCP"], [4, 6]) == []
    assert missing(rows[:1], ["x/a"], ["x/b"], [80], ["TCP"], [4, 6]) == [
        ("x/a", "x/b", 80, "TCP", 6)
    ]
