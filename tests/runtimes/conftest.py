"""Session fixtures of the runtime tests: one private containerd (`containerd`)."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator

import pytest

from tests.runtimes.containerd_fixture import BUSYBOX, Containerd


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """A running private containerd (CRI plugin on) with the busybox image imported in
    the tests' namespace and in `k8s.io`; at the end nothing of it may be left."""
    if os.geteuid() != 0:
        pytest.skip("containerd needs root")
    if shutil.which("containerd") is None or shutil.which("runc") is None or not BUSYBOX.exists():
        pytest.skip("needs Debian's containerd, runc and busybox-static (scripts/install.sh)")
    daemon = Containerd(tmp_path_factory.mktemp("containerd"), secrets.token_hex(3))
    try:
        daemon.start()
        daemon.import_image()
        yield daemon
    finally:
        try:
            if daemon.proc is not None:
                daemon.clean()
        finally:
            daemon.stop()
        left = daemon.leftovers()
        shutil.rmtree(daemon.base, ignore_errors=True)
    assert left == [], f"containerd left: {left}"
