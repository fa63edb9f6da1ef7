"""Conformance: every case under cases/ against real pods, real packets and policy trace.

A case file holds `description`, optional `peers` (`outside`, `host`), and either
one step inline (`apply`, `expect`) or `steps`: each step may change pod or
namespace labels (`pods: {x/a: {labels}}`, `namespaces: {x: {labels}}`), apply
or delete manifests (`apply`, `delete`: YAML text) and then states the whole
expected table (`expect`, see `expect.py`). Tables are written from the policy
semantics (the facts file, the Kubernetes NetworkPolicy documentation), never
from Cilia's output. Every probe is compared with the table, and for pod pairs
`policy trace` must give the same verdict as the packets did. The same cases and
tables run on one node (`test_conformance.py`) and on a cluster
(`test_conformance_cluster.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cilia.cli.matrix import Key
from tests.conformance.expect import expected
from tests.conformance.world import World, dump_all, namespace_doc

CASES = sorted((Path(__file__).parent / "cases").glob("*.yaml"))
CASE_IDS = [p.stem for p in CASES]
TIMEOUT = 0.4
RETRY_TIMEOUT = 1.5


def load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = yaml.safe_load(path.read_text())
    if "steps" not in case:
        case["steps"] = [{k: case[k] for k in ("apply", "expect") if k in case}]
    return case


def _describe(key: Key, want: bool, got: bool, what: str) -> str:
    src, dst, port, proto, family = key
    word = {True: "allowed", False: "denied"}
    return f"{src} -> {dst} {port}/{proto} IPv{family}: expected {word[want]}, {what} {word[got]}"


def run_step(w: World, step: dict[str, Any], peers: list[str]) -> list[str]:
    """Make the step's changes, probe everything and trace the pod pairs; returns the
    differences from the step's table."""
    changes = [namespace_doc(ns, labels) for ns, labels in (step.get("namespaces") or {}).items()]
    changes += [w.pod_doc(ref, labels) for ref, labels in (step.get("pods") or {}).items()]
    if changes:
        w.apply(dump_all(changes))
    if step.get("delete"):
        w.delete(w.substitute(step["delete"]))
    if step.get("apply"):
        w.apply(w.substitute(step["apply"]))
    w.settle()
    table = w.pod_matrix(TIMEOUT)
    if peers:
        table |= w.edge_matrix(peers, TIMEOUT)
    want = expected(step.get("expect") or [], table)
    problems: list[str] = []
    for key in sorted(table):
        if table[key] != want[key] and not table[key]:
            table[key] = w.reprobe(key, RETRY_TIMEOUT)  # a slow answer is still an answer
        if table[key] != want[key]:
            problems.append(_describe(key, want[key], table[key], "probe"))
    pod_keys = [k for k in table if "/" in k[0] and "/" in k[1]]
    for key, allowed in w.trace_verdicts(pod_keys).items():
        if allowed != table[key]:
            problems.append(_describe(key, table[key], allowed, "(by probe) but trace"))
    return problems


def run_case(w: World, path: Path) -> None:
    """Every step of a case (AssertionError listing the differences), then `reset`."""
    case = load(path)
    try:
        for index, step in enumerate(case["steps"]):
            problems = run_step(w, step, case.get("peers") or [])
            assert not problems, f"step {index}: {len(problems)} differences:\n" + "\n".join(
                problems[:30]
            )
    finally:
        reset(w)


def reset(w: World) -> None:
    """Remove the case's policies and services and restore the base labels (pods stay)."""
    w.remove_objects(("policies", "services"))
    for agent in w.agents.values():
        agent.request("DELETE", "/policy", json={"all": True})
    w.apply(w.base)
