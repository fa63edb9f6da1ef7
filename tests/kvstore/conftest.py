"""A real etcd for the kvstore tests: one server per session, a private key prefix per test,
and factories for the node-side objects (each stopped at the end of its test)."""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cilia.cluster.etcd import EtcdServer
from cilia.kvstore import Etcd, NodeSession
from cilia.kvstore.identities import ClusterIdentityAllocator
from cilia.proxy.sockets import free_port

TIMEOUT = 2.0


def new_server() -> EtcdServer:
    """An etcd with its own data directory and ports (not started)."""
    tag = secrets.token_hex(3)
    return EtcdServer(
        Path(tempfile.mkdtemp(prefix=f"cilia-test-etcd-{tag}-")),
        client_port=free_port(),
        peer_port=free_port(),
        name=f"cilia-test-{tag}",
    )


def wait_until(predicate: Callable[[], object], timeout: float, step: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def _served() -> Iterator[EtcdServer]:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    server = new_server()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """The session's etcd (stopped by pid and deleted at the end)."""
    yield from _served()


@pytest.fixture
def private_server() -> Iterator[EtcdServer]:
    """An etcd of this test alone, for tests that stop it."""
    yield from _served()


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> Iterator[Etcd]:
    client = Etcd([etcd_server.url], timeout=TIMEOUT)
    yield client
    client.close()


@pytest.fixture
def prefix(etcd: Etcd) -> Iterator[str]:
    """A key prefix no other test or run uses; deleted at the end."""
    name = f"cilia-test-{secrets.token_hex(3)}/"
    yield name
    etcd.delete_prefix(name)


@dataclass
class Node:
    """One node's client, lease session and identity allocator."""

    name: str
    etcd: Etcd
    session: NodeSession
    identities: ClusterIdentityAllocator
    stopped: bool = False

    def stop(self, revoke: bool = True) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.identities.stop()
        self.session.stop(revoke=revoke)
        self.etcd.close()


@dataclass
class Nodes:
    """Makes nodes against one etcd under one prefix; stops them all at the end."""

    endpoints: list[str]
    prefix: str
    made: list[Node] = field(default_factory=list)

    def __call__(
        self,
        name: str,
        ttl: int = 30,
        keepalive: float = 1.0,
        gc_interval: float = 0.0,
        start: bool = True,
    ) -> Node:
        etcd = Etcd(self.endpoints, timeout=TIMEOUT)
        session = NodeSession(etcd, ttl, keepalive)
        identities = ClusterIdentityAllocator(
            etcd, session, name, prefix=self.prefix, gc_interval=gc_interval
        )
        node = Node(name, etcd, session, identities)
        self.made.append(node)
        if start:
            session.start()
            identities.start()
            assert identities.wait_synced(5.0)
        return node

    def stop_all(self) -> None:
        for node in self.made:
            node.stop()


@pytest.fixture
def nodes(etcd_server: EtcdServer, prefix: str) -> Iterator[Nodes]:
    factory = Nodes([etcd_server.url], prefix)
    yield factory
    factory.stop_all()
