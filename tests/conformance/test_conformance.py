"""Conformance on one node: every case of cases/ (see `suite.py`) on one dual-stack
agent's pods."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.datapath.external import Outside
from tests.conformance.suite import CASE_IDS, CASES, run_case
from tests.conformance.world import NodeWorld, outside_addresses
from tests.integration.harness import Cilia

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    cilia = Cilia(tmp_path_factory.mktemp("conformance"))
    cilia.configure(
        {"CILIA_ENABLE_IPV6": "true", "CILIA_IPV6_RANGE": f"fd00:c1a:{cilia.tag[:4]}::/96"}
    )
    outside = Outside(
        netns=f"{cilia.config.name_prefix}-outside",
        host_ifname=f"co{cilia.tag}",
        **outside_addresses(cilia.tag),
    )
    w = NodeWorld(cilia, outside)
    try:
        w.setup(sys.executable)
        yield w
    finally:
        left = w.teardown()
        assert left == [], f"left behind: {left}"


@pytest.mark.parametrize("path", CASES, ids=CASE_IDS)
def test_case(world: NodeWorld, path: Path) -> None:
    run_case(world, path)


def test_case_count() -> None:
    assert len(CASES) >= 100, f"only {len(CASES)} conformance cases"
