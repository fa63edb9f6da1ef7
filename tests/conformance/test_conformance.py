"""Conformance: every case under cases/ against real pods, real packets and policy trace.

A case file holds `description`, optional `peers` (`outside`, `host`), and either
one step inline (`apply`, `expect`) or `steps`: each step may change pod or
namespace labels (`pods: {x/a: {labels}}`, `namespaces: {x: {labels}}`), apply
or delete manifests (`apply`, `delete`: YAML text) and then states the whole
expected table (`expect`, see `expect.py`). Tables are written from the policy
semantics (the facts file, the Kubernetes NetworkPolicy documentation), never
from Cilia's output. Every probe is compared with the table, and for pod pairs
`policy trace` must give the same verdict as the packets did.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cilia.datapath.external import Outside
from tests.conformance.expect import Key, expected
from tests.conformance.world import BASE, World, dump_all, namespace_doc, pod_doc
from tests.integration.harness import Cilia

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

CASES = sorted((Path(__file__).parent / "cases").glob("*.yaml"))
TIMEOUT = 0.4
RETRY_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    cilia = Cilia(tmp_path_factory.mktemp("conformance"))
    n = int(cilia.tag[:2], 16)
    outside = Outside(
        netns=f"{cilia.config.name_prefix}-outside",
        host_ifname=f"co{cilia.tag}",
        host_ip=f"198.18.{n}.1",
        outside_ip=f"198.18.{n}.2",
    )
    w = World(cilia, outside)
    try:
        w.setup(sys.executable)
        yield w
    finally:
        left = w.teardown()
        assert left == [], f"left behind: {left}"


def load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = yaml.safe_load(path.read_text())
    if "steps" not in case:
        case["steps"] = [{k: case[k] for k in ("apply", "expect") if k in case}]
    return case


def _describe(key: Key, want: bool, got: bool, what: str) -> str:
    src, dst, port, proto = key
    word = {True: "allowed", False: "denied"}
    return f"{src} -> {dst} {port}/{proto}: expected {word[want]}, {what} {word[got]}"


def run_step(w: World, step: dict[str, Any], peers: list[str]) -> list[str]:
    c = w.cilia
    changes = [namespace_doc(ns, labels) for ns, labels in (step.get("namespaces") or {}).items()]
    changes += [pod_doc(ref, labels) for ref, labels in (step.get("pods") or {}).items()]
    if changes:
        c.apply(dump_all(changes))
    if step.get("delete"):
        c.delete(w.substitute(step["delete"]))
    if step.get("apply"):
        c.apply(w.substitute(step["apply"]))
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


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(world: World, path: Path) -> None:
    case = load(path)
    try:
        for index, step in enumerate(case["steps"]):
            problems = run_step(world, step, case.get("peers") or [])
            assert not problems, f"step {index}: {len(problems)} differences:\n" + "\n".join(
                problems[:30]
            )
    finally:
        reset(world.cilia)


def reset(c: Cilia) -> None:
    """Remove the case's policies and services and restore the base labels (pods stay)."""
    services = c.client.request("GET", "/objects/services")
    backends = [
        {"object": {"apiVersion": "v1", "kind": "Endpoints", "metadata": s["object"]["metadata"]}}
        for s in services
    ]
    for item in c.client.request("GET", "/objects/policies") + services + backends:
        c.client.request(
            "POST",
            "/objects/delete",
            json={"text": yaml.safe_dump(item["object"]), "source": "reset"},
        )
    c.client.request("DELETE", "/policy", json={"all": True})
    c.apply(BASE)


def test_case_count() -> None:
    assert len(CASES) >= 100, f"only {len(CASES)} conformance cases"
