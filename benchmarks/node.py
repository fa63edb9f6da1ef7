"""Pieces of the one-node scale and soak benchmarks: a pod range wide enough for
thousands of pods, idle pods in batches, and the agent process as /proc sees it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from benchmarks.common import Cilia

BATCH = 250
"""Pods per `cilia apply` (the agent accepts at most CILIA_MAX_OBJECTS_PER_REQUEST)."""


def wide_pod_range() -> dict[str, str]:
    """A random /21 (2,046 addresses) in 10.250.0.0-10.255.255.255, where the harness's
    /24s (10.100-249.x) never are."""
    r = secrets.randbelow(6 * 32)
    return {"CILIA_POD_CIDR": f"10.{250 + r // 32}.{(r % 32) * 8}.0/21"}


def pod_yaml(ns: str, name: str, group: str, responder: bool = False) -> str:
    """An idle pod: one container without command or ports, so no process runs; with
    `responder`, ports 80/TCP and 53/UDP, served by the node's responder host."""
    ports = "    ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]\n"
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, "
        f"labels: {{app: {ns}, group: {group}}}}}\nspec:\n  containers:\n  - name: idle\n"
        + (ports if responder else "")
    )


def namespace_yaml(ns: str) -> str:
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"


def apply_all(cilia: Cilia, docs: Iterable[str]) -> None:
    """`cilia apply` of one multi-document manifest."""
    cilia.apply("---\n".join(docs))


def agent_pid(cilia: Cilia) -> int:
    return int(cilia.config.pid_file.read_text().split()[0])


def status_field(pid: int, field: str) -> int:
    """A number of /proc/PID/status: VmRSS, VmHWM (kB), Threads ..."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def fd_kinds(pid: int) -> dict[str, int]:
    """Open fds of a process by kind: socket, pipe, anon (bpf maps, epoll ...), file."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = (
            target.split(":", 1)[0]
            if target.startswith(("socket:", "pipe:", "anon_inode:"))
            else "file"
        )
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def descendants(pid: int) -> list[int]:
    """Every process below pid (through /proc/*/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:
                continue
            out += map(int, kids)
            todo += map(int, kids)
    return out
