"""The conformance suite runs real pods: same skips as the integration tests."""

from tests.integration.conftest import pytest_collection_modifyitems, pytest_configure

__all__ = ["pytest_collection_modifyitems", "pytest_configure"]
