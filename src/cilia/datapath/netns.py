"""Named network namespaces (iproute2-compatible) and per-thread namespace switching.

Namespaces live as nsfs bind mounts under ``/run/netns`` so ``ip netns`` sees them too.
We never use ``ip netns exec``: it remounts ``/sys`` and hides ``/sys/fs/bpf``. Instead
the calling *thread* enters a namespace with ``setns(2)``, which for ``CLONE_NEWNET``
is per thread; sockets and child processes created meanwhile stay in that namespace.

Python 3.11 has no ``os.setns``/``os.unshare`` (added in 3.12), hence the tiny ctypes
wrappers below. pyroute2's own netns helpers fork a helper process for every namespace
creation and every in-namespace netlink socket, which is slow and risky in a threaded
agent, so we do the same few syscalls in-process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import IO, Any

NETNS_RUN_DIR = "/run/netns"

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_lock = threading.Lock()

_Stream = int | IO[Any] | None


def _check(rc: int, what: str, path: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _setns_fd(fd: int, path: str) -> None:
    # ctypes wrapper: os.setns only exists from Python 3.12 on.
    _check(_libc.setns(fd, CLONE_NEWNET), "setns", path)


def netns_path(name: str) -> str:
    """Return the iproute2-compatible path of the named namespace."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid netns name {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


def resolve_netns(ref: str) -> str:
    """Path of a namespace given by name (ours, under /run/netns) or by absolute path
    (a runtime's, e.g. ``/proc/<pid>/ns/net``)."""
    return ref if ref.startswith("/") else netns_path(ref)


def is_netns(path: str) -> bool:
    """True if *path* is a network namespace (an nsfs file)."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def netns_exists(name: str) -> bool:
    """True if ``/run/netns/<name>`` is a mounted network namespace."""
    return is_netns(netns_path(name))


def list_netns() -> list[str]:
    """Names of the mounted namespaces under ``/run/netns``, sorted."""
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if is_netns(os.path.join(NETNS_RUN_DIR, n)))


def _prepare_run_dir() -> None:
    # Same as iproute2: make the directory a shared mount so that namespace mounts
    # propagate to other mount namespaces (bind it onto itself first if needed).
    os.makedirs(NETNS_RUN_DIR, exist_ok=True)
    d = NETNS_RUN_DIR.encode()
    if _libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    _check(_libc.mount(d, d, b"none", MS_BIND | MS_REC, None), "bind mount", NETNS_RUN_DIR)
    _check(_libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None), "make shared", NETNS_RUN_DIR)


def _unshare_and_bind(path: str, errors: list[BaseException]) -> None:
    # Runs in a throw-away thread: unshare(CLONE_NEWNET) only affects this thread,
    # and its namespace survives the thread through the bind mount.
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare", path)
        src = b"/proc/thread-self/ns/net"
        _check(_libc.mount(src, path.encode(), b"none", MS_BIND, None), "bind netns", path)
    except BaseException as exc:
        errors.append(exc)


def create_netns(name: str) -> str:
    """Create the named namespace if it does not exist; return its path."""
    path = netns_path(name)
    with _lock:
        if is_netns(path):
            return path
        _prepare_run_dir()
        with suppress(FileExistsError):  # a stale mount point left by a crash: reuse it
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        errors: list[BaseException] = []
        worker = threading.Thread(target=_unshare_and_bind, args=(path, errors))
        worker.start()
        worker.join()
        if errors:
            _remove_mountpoint(path)
            raise errors[0]
    return path


def _remove_mountpoint(path: str) -> None:
    _libc.umount2(path.encode(), MNT_DETACH)  # EINVAL if not mounted: fine
    with suppress(FileNotFoundError):
        os.unlink(path)


def delete_netns(name: str) -> None:
    """Unmount and remove the named namespace; a no-op if it is gone.

    The namespace itself lives on while processes or sockets still use it.
    """
    path = netns_path(name)
    with _lock:
        _remove_mountpoint(path)


@contextmanager
def setns(path: str) -> Iterator[None]:
    """Move the current thread into the namespace at *path*, and back on exit.

    Never ``await`` inside: the event loop thread would run other tasks in there.
    """
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        origin = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(target)
        raise
    try:
        _setns_fd(target, path)
        try:
            yield
        finally:
            try:
                _setns_fd(origin, "origin")
            except OSError as exc:  # practically impossible; never continue silently
                raise RuntimeError(f"thread stuck in netns {path}: {exc}") from exc
    finally:
        os.close(target)
        os.close(origin)


def socket_in_netns(path: str, family: int, type: int, proto: int = 0) -> socket.socket:
    """Create a socket that belongs to the namespace at *path*."""
    with setns(path):
        return socket.socket(family, type, proto)


def popen_in_netns(
    path: str,
    argv: Sequence[str],
    *,
    stdout: _Stream,
    stderr: _Stream,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start *argv* in the namespace at *path*, in a new session.

    The child inherits the namespace of the thread that forks it, so we switch this
    thread around the fork instead of using ``preexec_fn`` (unsafe with threads and
    it disables the fast vfork path). The process never sees a remounted ``/sys``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such netns", path)
    with setns(path):
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )
