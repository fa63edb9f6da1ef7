"""An in-test EndpointOwner: endpoints are plain views; patches and removals recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cilia.runtime.owner import EndpointPatch, EndpointRequest, Family


class FakeOwner:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.views: dict[str, dict[str, Any]] = {}
        self.patches: list[tuple[str, EndpointPatch]] = []
        self.removed: list[str] = []

    def add(self, container_id: str, runtime: str = "cni") -> None:
        with self.lock:
            self.views[container_id] = {"container-id": container_id, "runtime": runtime}

    def endpoint_put(self, req: EndpointRequest) -> dict[str, Any]:
        raise NotImplementedError

    def endpoint_patch(self, key: str, patch: EndpointPatch) -> dict[str, Any]:
        with self.lock:
            view = self.views[key.removeprefix("container-id:")]
            self.patches.append((key, patch))
            return view

    def endpoint_remove(self, key: str) -> bool:
        with self.lock:
            gone = self.views.pop(key.removeprefix("container-id:"), None)
            if gone is not None:
                self.removed.append(key)
            return gone is not None

    def endpoint_views(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(v) for v in self.views.values()]

    def ipam_allocate(self, family: Family = "ipv4") -> str:
        raise NotImplementedError

    def ipam_release(self, ip: str) -> None:
        raise NotImplementedError

    def last_patch(self, key: str) -> EndpointPatch | None:
        with self.lock:
            return next((p for k, p in reversed(self.patches) if k == key), None)


def wait_for(what: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
