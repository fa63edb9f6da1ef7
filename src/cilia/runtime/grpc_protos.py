"""The runtimes' gRPC APIs (containerd, CRI) from the protos in `cilia/runtime/protos`.

The `.proto` files are compiled with `grpc_tools.protoc` at first use into a cache
folder keyed by their contents and the protobuf version (`$XDG_CACHE_HOME/cilia/protos`
or `~/.cache/cilia/protos`), written atomically so concurrent processes share it. The
generated modules are untyped: this module is their small typed facade. A message
class is found by its full proto name; a call by its method path `/pkg.Service/Method`,
its request and response types taken from the compiled service descriptor.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, Self

import grpc  # type: ignore[import-untyped]
import grpc_tools  # type: ignore[import-untyped]
from google.protobuf import (  # type: ignore[import-untyped]
    __version__ as protobuf_version,
)
from google.protobuf import descriptor_pool, message_factory
from grpc_tools import protoc

from cilia.runtime import protos

PROTO_DIR = Path(protos.__file__).parent
PACKAGE_DIR = Path("cilia", "runtime", "protos")  # import path of the files inside the cache
_lock = threading.Lock()


class ProtoError(RuntimeError):
    """The protos could not be compiled or loaded."""


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "cilia", "protos")


def _sources() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def _key(sources: Sequence[Path]) -> str:
    digest = hashlib.sha256(f"{protobuf_version}\0{grpc_tools.__file__}".encode())
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _compile(sources: Sequence[Path], target: Path) -> None:
    """protoc into a fresh folder next to *target*, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        tree = work / "src"
        (tree / PACKAGE_DIR).mkdir(parents=True)
        out = work / "out"
        out.mkdir()
        for path in sources:
            shutil.copyfile(path, tree / PACKAGE_DIR / path.name)
        include = Path(grpc_tools.__file__).parent / "_proto"
        argv = ["protoc", f"-I{tree}", f"-I{include}", f"--python_out={out}"]
        argv += [str(PACKAGE_DIR / path.name) for path in sources]
        cwd = os.getcwd()
        try:
            os.chdir(tree)  # protoc resolves the relative file names from here
            code = protoc.main(argv)
        finally:
            os.chdir(cwd)
        if code != 0:
            raise ProtoError(f"protoc failed ({code}) on {[p.name for p in sources]}")
        try:
            os.rename(out, target)
        except OSError:
            if not target.is_dir():  # else another process won the race: same contents
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


@functools.cache
def load() -> dict[str, Any]:
    """Compile (once per cache key) and import every proto; module name -> module."""
    with _lock:
        sources = _sources()
        target = _cache_root() / _key(sources)
        if not target.is_dir():
            _compile(sources, target)
        generated = str(target / PACKAGE_DIR)
        if generated not in protos.__path__:
            protos.__path__.append(generated)
        return {
            path.stem: importlib.import_module(f"{protos.__name__}.{path.stem}_pb2")
            for path in sources
        }


def message(full_name: str) -> Any:
    """The message class of a full proto name, e.g. `runtime.v1.PodSandboxMetadata`."""
    load()
    desc = descriptor_pool.Default().FindMessageTypeByName(full_name)
    return message_factory.GetMessageClass(desc)


def unpack(any_msg: Any) -> Any | None:
    """The message inside a google.protobuf.Any, or None for a type we have no proto of.

    containerd names its event types without the `type.googleapis.com/` prefix."""
    name = str(any_msg.type_url).rsplit("/", 1)[-1]
    try:
        cls = message(name)
    except KeyError:
        return None
    return cls.FromString(any_msg.value)


def _method(path: str) -> tuple[Any, Any]:
    """(request class, response class) of a method path `/pkg.Service/Method`."""
    load()
    service, name = path.strip("/").split("/")
    desc = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    return (
        message_factory.GetMessageClass(desc.input_type),
        message_factory.GetMessageClass(desc.output_type),
    )


class Client:
    """A gRPC channel to a runtime's unix socket; calls by method path.

    `metadata` is sent with every call (containerd's `containerd-namespace`)."""

    def __init__(self, socket_path: str, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.socket_path = socket_path
        self.metadata = tuple(metadata)
        self._channel = grpc.insecure_channel(f"unix:{socket_path}")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, path: str, **fields: Any) -> Any:
        """A request message of method *path* built from keyword fields."""
        return _method(path)[0](**fields)

    def call(
        self,
        path: str,
        request: Any = None,
        timeout: float = 5.0,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Any:
        """One unary call; raises `grpc.RpcError` (see `code()`) on failure."""
        req_cls, resp_cls = _method(path)
        stub = self._channel.unary_unary(
            path,
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        return stub(
            req_cls() if request is None else request,
            timeout=timeout,
            metadata=self.metadata + tuple(metadata),
        )

    def stream(self, path: str, request: Any) -> Stream:
        """A server stream; iterate it, `cancel()` it from another thread to end it."""
        req_cls, resp_cls = _method(path)
        stub = self._channel.unary_stream(
            path,
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        return Stream(stub(request, metadata=self.metadata))


class Stream:
    """An open server stream of messages."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        return iter(self._call)

    def cancel(self) -> None:
        self._call.cancel()


RpcError: type[Exception] = grpc.RpcError  # what a failed call raises


class VersionedClient(Protocol):
    """A runtime's client whose Version call tells whether the runtime answers."""

    def version(self, timeout: float) -> object: ...

    def close(self) -> None: ...


def answers_version(client: VersionedClient, timeout: float) -> bool:
    """True when the runtime behind *client* answers its Version call; closes *client*."""
    try:
        client.version(timeout)
    except grpc.RpcError:
        return False
    finally:
        client.close()
    return True


def rpc_code(exc: BaseException) -> str:
    """The gRPC status code name of a failed call ("UNAVAILABLE", "NOT_FOUND", ...)."""
    code = getattr(exc, "code", None)
    return str(code().name) if callable(code) else "UNKNOWN"


def describe(exc: BaseException) -> str:
    """One line for a failure: a call's status code and details, or the exception."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if isinstance(exc, grpc.RpcError) and callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return f"{type(exc).__name__}: {exc}"
