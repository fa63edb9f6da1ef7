"""Kubernetes pod semantics for the embedded runtime: restartPolicy and readiness.

A container that exits is started again per the pod's `restartPolicy` (Always,
OnFailure, Never) after a backoff that doubles with each restart (as kubelet's
CrashLoopBackOff, with shorter steps), and its restarts are counted. A container is
ready when its `readinessProbe` says so (tcpSocket, httpGet or exec, run inside the
pod's network namespace against 127.0.0.1, with Kubernetes' period and thresholds);
without a probe, once its process runs. A container with ports and no command is the
built-in responder: its sockets are served by the node's responder host (`Responders`),
and it is ready when its ports listen.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from cilia.datapath.netns import popen_in_netns, setns
from cilia.runtime.processes import (
    ProcessRecord,
    exit_code,
    listening,
    process_alive,
    start_process,
    stop_process,
)

RestartPolicy = Literal["Always", "OnFailure", "Never"]
BACKOFF_FIRST = 1.0
"""Seconds before the second restart; each later one waits twice as long."""
BACKOFF_MAX = 60.0
BACKOFF_RESET = 120.0
"""A container that ran this long without exiting starts its backoff afresh."""
PROBE_HOST = "127.0.0.1"
BUILTIN_PERIOD = 10.0
"""Seconds between the listening checks of a built-in responder without a probe."""


class ContainerStartError(RuntimeError):
    """A container's command could not be run (not found, not executable)."""


class Responders(Protocol):
    """Where built-in responders run: one process per node serving every pod's ports."""

    def start(
        self, key: str, pod: str, netns: str, tcp: Sequence[int], udp: Sequence[int]
    ) -> None: ...

    def stop(self, key: str) -> None: ...

    def serving(self) -> set[str]: ...


@dataclass(frozen=True)
class Readiness:
    """A container's readinessProbe, resolved to a port number."""

    kind: Literal["tcp", "http", "exec"]
    port: int = 0
    path: str = "/"
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class ContainerSpec:
    """What the runtime needs of one container. `builtin`: the built-in responder
    (no command), answering as `pod` and ready when its ports listen."""

    name: str
    argv: list[str]
    tcp_ports: list[int]
    udp_ports: list[int]
    builtin: bool = False
    readiness: Readiness | None = None
    pod: str = ""

    @property
    def responder_key(self) -> str:
        """The built-in responder's name in the responder host."""
        return f"{self.pod}/{self.name}"


@dataclass
class ContainerStatus:
    """A container's process and what `cilia get pods` shows of it, kept across agent
    restarts."""

    name: str
    process: ProcessRecord | None = None
    responder: str | None = None
    """The key of the built-in responder serving this container."""
    restarts: int = 0
    ready: bool = False
    state: Literal["running", "waiting", "terminated"] = "running"
    exit_code: int | None = None
    started_at: float = 0.0
    backoff: int = 0
    """Restarts since the container last ran for BACKOFF_RESET seconds."""
    restart_at: float = 0.0
    """When a container waiting in backoff starts again (time.time())."""
    probed_at: float = 0.0
    successes: int = 0
    failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["process"] = self.process.to_dict() if self.process else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerStatus:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        process = fields.pop("process", None)
        return cls(**fields, process=ProcessRecord.from_dict(process) if process else None)


def restart_delay(backoff: int) -> float:
    """Wait before the next restart after `backoff` recent ones: none for the first."""
    return 0.0 if backoff == 0 else min(BACKOFF_FIRST * 2 ** (backoff - 1), BACKOFF_MAX)


def wants_restart(policy: RestartPolicy, code: int | None) -> bool:
    """Whether an exited container starts again (an unknown exit code counts as a
    failure: the process was started by an earlier agent)."""
    return policy == "Always" or (policy == "OnFailure" and code != 0)


def pod_phase(statuses: Sequence[ContainerStatus]) -> str:
    """Kubernetes' pod phase from its containers' states."""
    if not statuses or any(s.state != "terminated" for s in statuses):
        return "Running"
    return "Succeeded" if all(s.exit_code == 0 for s in statuses) else "Failed"


def _launch(
    netns_path: str, spec: ContainerSpec, status: ContainerStatus, log_dir: Path, host: Responders
) -> None:
    """Run one container: its command, or its ports in the responder host."""
    if spec.builtin:
        try:
            host.start(spec.responder_key, spec.pod, netns_path, spec.tcp_ports, spec.udp_ports)
        except ContainerStartError as exc:
            raise ContainerStartError(f"container {spec.name}: built-in responder: {exc}") from None
        status.responder = spec.responder_key
    elif spec.argv:
        try:
            status.process = start_process(netns_path, spec.argv, log_dir / f"{spec.name}.log")
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise ContainerStartError(
                f"container {spec.name}: cannot run {spec.argv[0]!r}: {why}"
            ) from None


def _gone(status: ContainerStatus, host: Responders) -> bool:
    """Whether a running container's process (or responder) ended."""
    if status.responder is not None:
        return status.responder not in host.serving()
    return status.process is not None and not process_alive(status.process)


def start_containers(
    netns_path: str, specs: Sequence[ContainerSpec], log_dir: Path, now: float, host: Responders
) -> list[ContainerStatus]:
    """Start every container inside the pod; stops them all if one fails."""
    log_dir.mkdir(parents=True, exist_ok=True)
    statuses: list[ContainerStatus] = []
    try:
        for spec in specs:
            status = ContainerStatus(spec.name, started_at=now)
            statuses.append(status)
            _launch(netns_path, spec, status, log_dir, host)
    except BaseException:
        stop_containers(statuses, host)
        raise
    return statuses


def stop_containers(statuses: Sequence[ContainerStatus], host: Responders) -> None:
    """Stop every container's process or responder (idempotent)."""
    for status in statuses:
        if status.process is not None:
            stop_process(status.process)
            status.process = None
        if status.responder is not None:
            host.stop(status.responder)
            status.responder = None


def supervise(
    netns_path: str,
    specs: Sequence[ContainerSpec],
    statuses: list[ContainerStatus],
    policy: RestartPolicy,
    log_dir: Path,
    now: float,
    host: Responders,
) -> list[str]:
    """Notice exits and restart per `policy` once the backoff passed; `statuses` are
    index-aligned with `specs` and updated in place. Returns what happened, one line
    per change."""
    events = []
    for spec, status in zip(specs, statuses, strict=True):
        if status.state == "running" and _gone(status, host):
            code = None
            if status.process is not None:
                code = exit_code(status.process)
                stop_process(status.process)  # reaps it, and any process it left in its group
            status.process, status.responder = None, None
            status.exit_code, status.ready = code, False
            status.successes = 0
            if now - status.started_at >= BACKOFF_RESET:
                status.backoff = 0
            if wants_restart(policy, code):
                status.state, status.restart_at = "waiting", now + restart_delay(status.backoff)
                events.append(f"container {spec.name} exited ({_code(code)}), restarting")
            else:
                status.state = "terminated"
                events.append(f"container {spec.name} exited ({_code(code)}), not restarted")
        if status.state == "waiting" and now >= status.restart_at:
            status.restarts, status.backoff = status.restarts + 1, status.backoff + 1
            try:
                _launch(netns_path, spec, status, log_dir, host)
            except ContainerStartError as exc:
                status.restart_at = now + restart_delay(status.backoff)
                events.append(f"{exc}, trying again")
                continue
            status.state, status.started_at = "running", now
            status.probed_at, status.failures = 0.0, 0
            events.append(f"container {spec.name} restarted ({status.restarts})")
    return events


def _code(code: int | None) -> str:
    return "exit code unknown" if code is None else f"exit code {code}"


def probe_due(spec: ContainerSpec, status: ContainerStatus, now: float) -> bool:
    """Whether the container's readiness is to be checked now."""
    if status.state != "running":
        return False
    check = spec.readiness
    if check is None:
        return not status.ready or (spec.builtin and now >= status.probed_at + BUILTIN_PERIOD)
    if now < status.started_at + check.initial_delay:
        return False
    return now >= status.probed_at + check.period


def check_ready(netns_path: str, spec: ContainerSpec) -> bool:
    """One readiness check of a running container (blocking, bounded by its timeout)."""
    check = spec.readiness
    if check is None:
        if spec.builtin:
            return set(spec.tcp_ports) <= listening(netns_path, "tcp") and set(
                spec.udp_ports
            ) <= listening(netns_path, "udp")
        return True
    try:
        if check.kind == "exec":
            return _exec_ok(netns_path, check)
        with setns(netns_path):  # the socket belongs to the pod's namespace
            sock = socket.create_connection((PROBE_HOST, check.port), timeout=check.timeout)
        with sock:
            return check.kind == "tcp" or _http_ok(sock, check)
    except OSError:
        return False


def record_probe(spec: ContainerSpec, status: ContainerStatus, ok: bool, now: float) -> bool:
    """Apply one probe result with the thresholds; True when readiness changed."""
    check = spec.readiness
    status.probed_at = now
    before = status.ready
    if check is None:
        status.ready = ok
    elif ok:
        status.successes, status.failures = status.successes + 1, 0
        if status.successes >= check.success_threshold:
            status.ready = True
    else:
        status.failures, status.successes = status.failures + 1, 0
        if status.failures >= check.failure_threshold:
            status.ready = False
    return status.ready != before


def _http_ok(sock: socket.socket, check: Readiness) -> bool:
    request = f"GET {check.path} HTTP/1.1\r\nHost: {PROBE_HOST}:{check.port}\r\n"
    sock.sendall((request + "User-Agent: cilia-probe\r\nConnection: close\r\n\r\n").encode())
    head = sock.recv(64).split(b" ", 2)
    return len(head) >= 2 and head[1].isdigit() and 200 <= int(head[1]) < 400


def _exec_ok(netns_path: str, check: Readiness) -> bool:
    proc = popen_in_netns(
        netns_path, check.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        return proc.wait(check.timeout) == 0
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
