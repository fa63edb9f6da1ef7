"""Agent configuration: defaults, overridable by CILIA_* environment variables and flags."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentConfig(BaseSettings):
    """Where the agent keeps its socket, state and pins, and how it names kernel objects."""

    model_config = SettingsConfigDict(env_prefix="CILIA_", extra="forbid")

    run_dir: Path = Field(Path("/var/run/cilia"), description="socket, pid file and log")
    state_dir: Path = Field(Path("/var/lib/cilia"), description="endpoint and policy state")
    bpf_dir: Path = Field(Path("/sys/fs/bpf/cilia"), description="pins of maps and links")
    cache_dir: Path = Field(Path("/var/cache/cilia"), description="compiled BPF objects")
    name_prefix: str = Field("cilia", description="prefix of pod network namespace names")
    pod_cidr: str = Field("10.200.0.0/16", description="IPv4 range of local pods")
    node_name: str = Field(default_factory=socket.gethostname)
    ct_lifetime_tcp: int = 21600
    ct_lifetime_tcp_syn: int = 60
    ct_lifetime_tcp_closing: int = 10
    ct_lifetime_nontcp: int = 60
    ct_gc_interval: float = 60.0
    ct_gc_non_tcp_idle: int = Field(10, description="idle seconds of non-TCP entries GC removes")
    ct_max_entries: int = Field(262144, ge=1024, description="size of the CT table")
    trace_notification: bool = Field(False, description="trace events for every endpoint")
    monitor_queue_size: int = Field(65536, ge=16, description="events queued per monitor client")
    prometheus_serve_addr: str = Field("", description="HOST:PORT of /metrics (off when empty)")
    sync_interval: float = 10.0
    mtu: int = 1500
    legacy_host_allows_world: bool = Field(
        False, description="policies allowing host also allow world; node addresses are host"
    )
    allow_localhost: Literal["policy", "always"] = Field(
        "policy", description="'always': the node may reach every local pod, whatever the policy"
    )

    @field_validator("pod_cidr")
    @classmethod
    def _valid_cidr(cls, value: str) -> str:
        net = ipaddress.IPv4Network(value, strict=True)
        if net.prefixlen > 28:
            raise ValueError("pod range must hold at least 16 addresses (/28 or wider)")
        return str(net)

    @field_validator("name_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c == "-" for c in value):
            raise ValueError("use letters, digits and '-' only")
        return value

    @property
    def host_router_ip(self) -> str:
        """The node's address towards its pods (last of the pod range): identity `host`."""
        return str(ipaddress.IPv4Network(self.pod_cidr)[-2])

    @property
    def socket_path(self) -> Path:
        """The REST API's unix socket."""
        return self.run_dir / "cilia.sock"

    @property
    def pid_file(self) -> Path:
        """PID of a background agent started with `cilia up`."""
        return self.run_dir / "cilia.pid"

    @property
    def log_file(self) -> Path:
        """Log of a background agent."""
        return self.run_dir / "cilia.log"

    @property
    def state_file(self) -> Path:
        """The agent's persisted state."""
        return self.state_dir / "state.json"
