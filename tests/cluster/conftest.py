"""Cluster tests take the session's shared `cluster` (tests/conftest.py); the same skips
as the integration tests apply (root, clang-19)."""

from tests.integration.conftest import pytest_collection_modifyitems, pytest_configure

__all__ = ["pytest_collection_modifyitems", "pytest_configure"]
