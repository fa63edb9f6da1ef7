"""A real agent for integration tests, under a per-run unique prefix.

Every kernel object it creates (namespaces, devices, pins) is named from the
prefix, and `stop()` runs `cilia down` and then checks that nothing is left.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from cilia.agent.config import AgentConfig
from cilia.cli.client import Client
from cilia.datapath.netns import socket_in_netns
from cilia.datapath.proxy_device import proxy_device_name


@dataclass
class CommandResult:
    """Exit code and output of one `cilia` command."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout decoded as JSON."""
        return json.loads(self.stdout)


@dataclass
class Cilia:
    """Drives one agent through the real `cilia` command line."""

    tmp: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))

    def __post_init__(self) -> None:
        octet = 100 + int(self.tag[:2], 16) % 150
        service_octet = 90 + int(self.tag[4:6], 16) % 6
        self.env = {
            **os.environ,
            "CILIA_RUN_DIR": str(self.tmp / "run"),
            "CILIA_STATE_DIR": str(self.tmp / "state"),
            "CILIA_CACHE_DIR": str(self.tmp / "cache"),
            "CILIA_BPF_DIR": f"/sys/fs/bpf/cilia-test-{self.tag}",
            "CILIA_NAME_PREFIX": f"cilia-test-{self.tag}",
            "CILIA_POD_CIDR": f"10.{octet}.{int(self.tag[2:4], 16)}.0/24",
            # Each agent's ClusterIPs of its own: the node's socket hooks of agents
            # sharing a namespace must not take each other's frontends.
            "CILIA_SERVICE_CIDR": f"10.{service_octet}.{int(self.tag[2:4], 16)}.0/24",
            "CILIA_SYNC_INTERVAL": "1",
        }
        self.configure({})

    def configure(self, env: dict[str, str]) -> None:
        """Add CILIA_* settings (before `start`); `config` follows them."""
        self.env.update(env)
        # Read exactly as the agent reads its environment (JSON lists and maps included).
        with mock.patch.dict(os.environ, self.env, clear=True):
            self.config = AgentConfig()

    @property
    def client(self) -> Client:
        """API client of this agent."""
        return Client(self.config.socket_path)

    def run(self, *args: str, input: str | None = None, check: bool = True) -> CommandResult:
        """Run `cilia ARGS...`; raise unless it exits 0 (when check)."""
        proc = subprocess.run(
            [sys.executable, "-m", "cilia.cli.main", *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        res = CommandResult(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"cilia {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return res

    def apply(self, manifest: str, check: bool = True) -> CommandResult:
        """`cilia apply -f -` with a YAML text."""
        return self.run("apply", "-f", "-", input=textwrap.dedent(manifest), check=check)

    def delete(self, manifest: str) -> CommandResult:
        """`cilia delete -f -` with a YAML text."""
        return self.run("delete", "-f", "-", input=textwrap.dedent(manifest))

    def probe(self, src: str, dst: str, port: int = 80, proto: str = "TCP") -> bool:
        """True when src reaches dst (through the agent's probe API)."""
        res = self.client.request(
            "POST",
            "/probe",
            json={
                "source": src,
                "destination": dst,
                "port": port,
                "protocol": proto,
                "timeout": 0.6,
            },
        )
        return bool(res["result"] == "allowed")

    def matrix(
        self, ports: list[int], protocols: list[str], namespaces: list[str] | None = None
    ) -> dict[tuple[str, str, int, str], bool]:
        """(from, to, port, protocol) -> allowed, for every pair of pods."""
        res = self.client.request(
            "POST",
            "/probe/matrix",
            json={
                "ports": ports,
                "protocols": protocols,
                "namespaces": namespaces or [],
                "timeout": 0.6,
            },
        )
        return {
            (r["from"], r["to"], r["port"], r["protocol"]): r["result"] == "allowed"
            for r in res["results"]
        }

    def counters(self) -> dict[tuple[int, str], int]:
        """(reason code, direction) -> packets, from the datapath's per-CPU map."""
        return {
            (r["reason_code"], r["direction"]): r["packets"]
            for r in self.client.request("GET", "/bpf/metrics")
        }

    def reset(self) -> None:
        """Delete every object and rule, leaving the agent running."""
        for kind in ("policies", "pods", "namespaces"):
            for item in self.client.request("GET", f"/objects/{kind}"):
                self.client.request(
                    "POST",
                    "/objects/delete",
                    json={"text": json.dumps(item["object"]), "source": "reset"},
                )
        self.client.request("DELETE", "/policy", json={"all": True})

    def start(self) -> None:
        """`cilia up`."""
        self.run("up")

    def devices(self) -> set[str]:
        """Host-side devices of the agent's endpoints."""
        try:
            return {ep["interface"] for ep in self.client.request("GET", "/endpoint")}
        except Exception:
            return set()

    def stop(self) -> list[str]:
        """`cilia down`, then return whatever this agent left in the kernel."""
        devices = self.devices()
        self.run("down")
        return leftovers(self.config, devices)


def leftovers(config: AgentConfig, devices: set[str]) -> list[str]:
    """Kernel objects and processes named after this agent's prefix."""
    devices = devices | {proxy_device_name(config.name_prefix)}
    left = [f"device {d}" for d in devices if Path(f"/sys/class/net/{d}").exists()]
    netns = Path("/run/netns")
    if netns.exists():
        left += [
            f"netns {n.name}"
            for n in netns.iterdir()
            if n.name.startswith((config.name_prefix + "-", config.name_prefix + "_"))
        ]
    if config.bpf_dir.exists():
        left.append(f"pins {config.bpf_dir}")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if f"CILIA_NAME_PREFIX={config.name_prefix}\0".encode() in environ:
            left.append(f"process {pid}: {cmdline.replace(chr(0), ' ')}")
    lo = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True)
    if f" {config.host_router_ip}/32 " in lo.stdout:
        left.append(f"router address {config.host_router_ip}")
    out = subprocess.run(["ip", "-o", "route"], capture_output=True, text=True).stdout
    net = config.pod_cidr.rsplit(".", 1)[0] + "."
    left += [f"route {line}" for line in out.splitlines() if line.startswith(net)]
    return left


def ready_endpoints(c: Cilia) -> dict[str, dict[str, Any]]:
    """Pod name -> endpoint of every ready endpoint of the agent."""
    eps = c.client.request("GET", "/endpoint")
    return {e["pod"].split("/")[1]: e for e in eps if e["state"] == "ready"}


def answering_pod(netns: str, ip: str, port: int, timeout: float = 2) -> str | None:
    """The pod (`ns/name`, as the built-in responder says) that answered an HTTP request
    from the namespace at `netns` to ip:port; None when nothing answered."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket_in_netns(netns, family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect((ip, port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    return str(json.loads(data.partition(b"\r\n\r\n")[2])["pod"])


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether `check` comes true within `timeout` seconds (polled every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


@contextmanager
def running_agent(tmp: Path, dual_stack: bool = False, **env: str) -> Iterator[Cilia]:
    """A started agent (extra CILIA_* settings in env; `dual_stack`: IPv6 on, with an
    IPv6 range of its own); on exit `cilia down` must leave nothing behind."""
    agent = Cilia(tmp)
    if dual_stack:
        range6 = f"fd00:c1a:{agent.tag[:4]}::/96"
        agent.configure({"CILIA_ENABLE_IPV6": "true", "CILIA_IPV6_RANGE": range6})
    agent.configure(env)
    try:
        agent.start()
        yield agent
    finally:
        left = agent.stop()
        assert left == [], f"cilia down left: {left}"
