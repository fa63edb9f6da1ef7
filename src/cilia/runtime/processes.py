"""Pod processes: start in a namespace, check, stop — safe across agent restarts.

A ``ProcessRecord`` names a process by PID *and* kernel start time, so a reused PID
is never mistaken for (or killed as) ours. Each process leads its own session and
process group; stopping it signals the whole group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from cilia.datapath.netns import popen_in_netns, setns

# Children started by this process, so they are reaped (no zombies, no warnings),
# and the exit status of those reaped, by PID, until asked for or stopped.
_children: dict[int, subprocess.Popen[bytes]] = {}
_exited: dict[int, int] = {}


@dataclass(frozen=True)
class ProcessRecord:
    """A started process: PID, start time (clock ticks since boot) and argv."""

    pid: int
    start_time: int
    argv: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_time": self.start_time, "argv": list(self.argv)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(int(data["pid"]), int(data["start_time"]), tuple(data["argv"]))


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time) from /proc/<pid>/stat, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # the name may contain spaces
    return fields[0].decode(), int(fields[2]), int(fields[19])


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and (code := child.poll()) is not None:
        del _children[pid]
        _exited[pid] = code


def start_process(
    netns_path: str,
    argv: Sequence[str],
    log_path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
) -> ProcessRecord:
    """Start *argv* inside the namespace, stdout and stderr appended to *log_path*."""
    with open(log_path, "ab") as log:
        child = popen_in_netns(netns_path, argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    _children[child.pid] = child
    stat = _stat(child.pid)
    if stat is None:  # cannot happen: an unreaped child keeps its /proc entry
        raise ProcessLookupError(child.pid)
    return ProcessRecord(child.pid, stat[2], tuple(argv))


def _running(pid: int, start_time: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[2] == start_time and stat[0] not in ("Z", "X")


def process_alive(rec: ProcessRecord) -> bool:
    """True if the recorded process (same PID and start time) is running."""
    _reap(rec.pid)
    return _running(rec.pid, rec.start_time)


def exit_code(rec: ProcessRecord) -> int | None:
    """The exit status of a process that ended, if this process started it (a process
    an earlier agent started is not our child: None)."""
    _reap(rec.pid)
    return _exited.pop(rec.pid, None)


def _group(pgid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live member of process group *pgid*."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) and stat[1] == pgid:
            members.append((int(entry), stat[2]))
    return members


def _kill(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stop_process(rec: ProcessRecord, timeout: float = 2.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after *timeout*.

    Idempotent. Group members are named by PID and start time, never by a bare id.
    """
    if process_alive(rec):
        members = _group(rec.pid)  # the leader's group id is its PID (own session)
        for pid, start in members:
            if _running(pid, start):
                _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_running(p, s) for p, s in members):
            time.sleep(0.01)
        if (stat := _stat(rec.pid)) and stat[2] == rec.start_time:  # leader (or its zombie)
            members += _group(rec.pid)  # still holds the id: catch late children too
        for pid, start in members:
            if _running(pid, start):
                _kill(pid, signal.SIGKILL)
    _exited.pop(rec.pid, None)
    child = _children.pop(rec.pid, None)
    if child is not None:
        child.wait()


def listening(path: str, proto: str) -> set[int]:
    """Ports with a listening TCP socket (`tcp`) or a bound UDP socket (`udp`) in the
    namespace at `path`."""
    ports: set[int] = set()
    with setns(path):  # /proc/thread-self/net shows this thread's namespace
        for name in (proto, proto + "6"):
            try:
                with open(f"/proc/thread-self/net/{name}") as f:
                    rows = f.read().splitlines()[1:]
            except FileNotFoundError:
                continue
            for row in rows:
                cols = row.split()
                if proto == "udp" or cols[3] == "0A":  # TCP_LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def wait_listening(
    netns_path: str, tcp: Iterable[int] = (), udp: Iterable[int] = (), timeout: float = 5.0
) -> bool:
    """Wait until every given TCP port listens and UDP port is bound in the namespace."""
    want_tcp, want_udp = set(tcp), set(udp)
    deadline = time.monotonic() + timeout
    while True:
        if want_tcp <= listening(netns_path, "tcp") and want_udp <= listening(netns_path, "udp"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
