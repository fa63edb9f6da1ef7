"""The agent's object store restores what this version accepts and drops the rest."""

from __future__ import annotations

import logging

import pytest

from cilia.agent.objects import ObjectStore

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"containers": [{"name": "c"}]},
}
PORTLESS_SERVICE = {  # accepted before Services were load-balanced
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "old", "namespace": "default"},
    "spec": {},
}


def test_an_object_this_version_refuses_is_dropped_and_the_rest_restored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "cilia.agent"):
        store = ObjectStore.from_state([POD, PORTLESS_SERVICE])
    assert store.keys() == {"Pod/default/web"}
    assert "stored object Service default/old dropped" in caplog.text
