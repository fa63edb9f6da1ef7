"""Shared fixtures for integration tests (real namespaces, devices and packets).

Tests marked ``integration`` are skipped unless running as root; tests also marked
``toolchain`` are skipped unless ``clang-19`` is installed.
"""

from __future__ import annotations

import os
import secrets
import shutil

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "toolchain: needs clang-19 (BPF objects are compiled)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    no_root = pytest.mark.skip(reason="needs root")
    no_clang = pytest.mark.skip(reason="needs clang-19")
    for item in items:
        if item.get_closest_marker("integration") and os.geteuid() != 0:
            item.add_marker(no_root)
        if item.get_closest_marker("toolchain") and shutil.which("clang-19") is None:
            item.add_marker(no_clang)


@pytest.fixture(scope="session")
def run_prefix() -> str:
    """Per-run unique prefix, ``ct`` + 6 hex digits (leaves 7 chars of a device name)."""
    return "ct" + secrets.token_hex(3)
