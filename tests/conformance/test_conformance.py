"""Conformance on one node: every case of cases/ (see `suite.py`) on one agent's pods."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.datapath.external import Outside
from tests.conformance.suite import CASE_IDS, CASES, run_case
from tests.conformance.world import NodeWorld
from tests.integration.harness import Cilia

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    cilia = Cilia(tmp_path_factory.mktemp("conformance"))
    n = int(cilia.tag[:2], 16)
    outside = Outside(
        netns=f"{cilia.config.name_prefix}-outside",
        host_ifname=f"co{cilia.tag}",
        host_ip=f"198.18.{n}.1",
        outside_ip=f"198.18.{n}.2",
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
