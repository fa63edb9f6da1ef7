"""Agent configuration: defaults < config file < CILIA_* environment variables < flags."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cilia.agent import config_file as cf
from cilia.defaults import RUN_DIR, SOCKET_NAME
from cilia.k8s.strict_yaml import InputLimits
from cilia.router import (
    IPV6_CLUSTER_ALLOC_CIDR,
    IPV6_NODE_PREFIX,
    IPV6_RANGE,
    router_ip,
    router_ip_problem,
    valid_ipv6_range,
)

SERVICE_CIDR = "10.96.0.0/16"
"""Default ClusterIP range (inside Kubernetes' default 10.96.0.0/12)."""
IPV6_SERVICE_CIDR = "fd00:c1a:5e::/112"

KVSTORE_OPTIONS = {"etcd.address"}
"""Keys `--kvstore-opt` accepts."""

CONTAINER_RUNTIMES = {"auto", "containerd", "docker", "crio", "none"}


class AgentConfig(BaseSettings):
    """Where the agent keeps its socket, state and pins, and how it names kernel objects."""

    model_config = SettingsConfigDict(env_prefix="CILIA_", extra="forbid")

    run_dir: Path = Field(Path(RUN_DIR), description="socket, pid file and log")
    state_dir: Path = Field(Path("/var/lib/cilia"), description="endpoint and policy state")
    bpf_dir: Path = Field(Path("/sys/fs/bpf/cilia"), description="pins of maps and links")
    host_proc: Path = Field(
        Path("/proc/1"),
        description="a process of the host's mount namespace, whose bpffs an agent in a mount "
        "namespace of its own pins into (as /hostproc/1 in a container)",
    )
    cache_dir: Path = Field(Path("/var/cache/cilia"), description="compiled BPF objects")
    config_file: Path | None = Field(None, description="YAML file of settings (flags' keys)")
    clean_state: bool = Field(False, description="remove every earlier state before starting")
    name_prefix: str = Field("cilia", description="prefix of pod network namespace names")
    pod_cidr: str = Field("10.200.0.0/16", description="IPv4 range of local pods")
    router_ip: str = Field(
        "", description="the node's address towards its pods, in the pod range (default: its last)"
    )
    enable_ipv6: bool = Field(False, description="dual stack: every pod gets an IPv6 address too")
    ipv6_range: str = Field(IPV6_RANGE, description="IPv6 range of local pods (one node alone)")
    ipv6_cluster_alloc_cidr: str = Field(
        IPV6_CLUSTER_ALLOC_CIDR, description="IPv6 /64 the nodes' /96 pod ranges are carved from"
    )
    service_cidr: str = Field(SERVICE_CIDR, description="IPv4 range of service ClusterIPs")
    ipv6_service_cidr: str = Field(
        IPV6_SERVICE_CIDR, description="IPv6 range of service ClusterIPs (with IPv6 on)"
    )
    node_port_range: str = Field("30000-32767", description="ports NodePort services get")
    nodeport_devices: list[str] = Field(
        default_factory=list,
        description="devices where outside traffic reaches node ports (empty: every device"
        " with an address but loopback and Cilia's own)",
    )
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
    kvstore: Literal["", "etcd"] = Field(
        "", description="'etcd': cluster mode, state shared through etcd; empty: one node alone"
    )
    kvstore_opt: dict[str, str] = Field(
        default_factory=dict, description="kvstore options, e.g. etcd.address=URL[,URL...]"
    )
    underlay_device: str = Field(
        "", description="device whose IPv4 address is this node's tunnel endpoint"
    )
    cluster_pod_cidr: str = Field(
        "10.208.0.0/12", description="cluster range the nodes' pod ranges are carved from"
    )
    node_pod_cidr_prefix: int = Field(24, ge=8, le=28, description="size of each node's range")
    lease_ttl: int = Field(900, ge=2, description="seconds the node's etcd lease lives")
    lease_keepalive: float = Field(300.0, gt=0, description="seconds between lease refreshes")
    identity_gc_interval: float = Field(
        600.0, gt=0, description="seconds between collections of unused cluster identities"
    )
    vxlan_port: int = Field(8472, ge=1, le=65535, description="UDP port of the VXLAN overlay")
    container_runtime: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="runtimes whose labels are watched: auto, containerd, docker, crio, none",
    )
    container_runtime_endpoint: dict[str, str] = Field(
        default_factory=dict, description="RUNTIME -> socket path, overriding the default"
    )
    docker_plugin_name: str = Field(
        "cilia", description="name of the Docker network and IPAM driver (its socket's name)"
    )
    docker_plugin_dir: Path = Field(
        Path("/run/docker/plugins"), description="where Docker looks for plugin sockets"
    )
    # Input limits (README "Input limits"): each refused with a clear error.
    max_request_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="largest API request body; a larger one is answered 413 before it is read",
    )
    max_objects_per_request: int = Field(
        1000, ge=1, description="objects one apply, delete or validate may carry, over its files"
    )
    max_rules_per_policy: int = Field(
        1000, ge=1, description="rules of one CiliumNetworkPolicy or one policy import"
    )
    max_labels_per_object: int = Field(
        64, ge=1, description="entries of one object's metadata.labels (or a Service's selector)"
    )
    max_nesting_depth: int = Field(
        64, ge=8, le=200, description="nesting of mappings and lists in a YAML or JSON document"
    )

    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        flags = getattr(init_settings, "init_kwargs", {})
        path = cf.config_file_path(flags, os.environ)
        return init_settings, env_settings, cf.AgentFileSource(settings_cls, path)

    @classmethod
    def load(cls, flags: Mapping[str, Any] | None = None) -> AgentConfig:
        """The configuration from flags, environment, file and defaults, recording where each
        value came from; errors name the file and key, or the field and its source."""
        flags = dict(flags or {})
        path = cf.config_file_path(flags, os.environ)
        if flags.get("config_file"):
            flags["config_file"] = path
        in_file = cf.read_config_file(path, cls.model_fields) if path else {}
        sources = cf.value_sources(cls.model_fields, flags, os.environ, path, in_file)
        try:
            config = cls(**flags)
        except ValidationError as exc:
            raise ValueError(cf.explain(exc, sources)) from None
        config._sources = sources
        return config

    def updated(self, source: str, **values: Any) -> AgentConfig:
        """A copy with values found at run time (the pod range from the kvstore)."""
        copy = self.model_copy(update=values)
        copy._sources = {**self._sources, **dict.fromkeys(values, source)}
        return copy

    def effective(self) -> dict[str, dict[str, Any]]:
        """Every setting by its flag's name: {"value": ..., "source": "default" | "file PATH"
        | "env CILIA_X" | "flag --x"}."""
        values = self.model_dump(mode="json")
        return {
            cf.file_key(k): {"value": v, "source": self._sources.get(k, "unknown")}
            for k, v in values.items()
        }

    @field_validator("pod_cidr")
    @classmethod
    def _valid_cidr(cls, value: str) -> str:
        net = ipaddress.IPv4Network(value, strict=True)
        if net.prefixlen > 28:
            raise ValueError("pod range must hold at least 16 addresses (/28 or wider)")
        return str(net)

    @field_validator("service_cidr")
    @classmethod
    def _valid_service_cidr(cls, value: str) -> str:
        return str(ipaddress.IPv4Network(value, strict=True))

    @field_validator("ipv6_service_cidr")
    @classmethod
    def _valid_ipv6_service_cidr(cls, value: str) -> str:
        return str(ipaddress.IPv6Network(value, strict=True))

    @field_validator("node_port_range")
    @classmethod
    def _valid_node_port_range(cls, value: str) -> str:
        low, sep, high = value.partition("-")
        if not sep or not low.isdigit() or not high.isdigit():
            raise ValueError(f"{value!r} is not a port range LOW-HIGH")
        if not 1 <= int(low) <= int(high) <= 65535:
            raise ValueError(f"{value!r}: need 1 <= LOW <= HIGH <= 65535")
        return f"{int(low)}-{int(high)}"

    @property
    def node_ports(self) -> tuple[int, int]:
        """The NodePort range as (low, high), inclusive."""
        low, _, high = self.node_port_range.partition("-")
        return int(low), int(high)

    @field_validator("cluster_pod_cidr")
    @classmethod
    def _valid_cluster_cidr(cls, value: str) -> str:
        return str(ipaddress.IPv4Network(value, strict=True))

    @field_validator("ipv6_range")
    @classmethod
    def _valid_ipv6_range(cls, value: str) -> str:
        return valid_ipv6_range(value, IPV6_NODE_PREFIX)

    @field_validator("ipv6_cluster_alloc_cidr")
    @classmethod
    def _valid_ipv6_cluster_cidr(cls, value: str) -> str:
        return valid_ipv6_range(value, 64)

    @field_validator("container_runtime")
    @classmethod
    def _valid_runtimes(cls, value: list[str]) -> list[str]:
        names = [n.strip() for item in value for n in item.split(",") if n.strip()]
        unknown = set(names) - CONTAINER_RUNTIMES
        if unknown:
            raise ValueError(
                f"unknown runtime(s) {sorted(unknown)}: use {sorted(CONTAINER_RUNTIMES)}"
            )
        if "none" in names and len(set(names)) > 1:
            raise ValueError("'none' cannot be combined with other runtimes")
        return names or ["none"]

    @field_validator("container_runtime_endpoint")
    @classmethod
    def _valid_runtime_endpoints(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = set(value) - (CONTAINER_RUNTIMES - {"auto", "none"})
        if unknown:
            raise ValueError(f"endpoints given for unknown runtime(s) {sorted(unknown)}")
        return value

    @field_validator("kvstore_opt")
    @classmethod
    def _valid_kvstore_opt(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = set(value) - KVSTORE_OPTIONS
        if unknown:
            raise ValueError(f"unknown kvstore option(s) {sorted(unknown)}: use {KVSTORE_OPTIONS}")
        return value

    @model_validator(mode="after")
    def _cluster_needs_endpoints(self) -> AgentConfig:
        if self.kvstore == "etcd" and not self.etcd_endpoints:
            raise ValueError("--kvstore etcd needs --kvstore-opt etcd.address=URL[,URL...]")
        if self.kvstore == "etcd" and self.lease_keepalive >= self.lease_ttl:
            raise ValueError("lease_keepalive must be shorter than lease_ttl")
        return self

    @model_validator(mode="after")
    def _router_in_pod_range(self) -> AgentConfig:
        # In cluster mode the node's range is known once it joined: checked then.
        problem = self.router_problem()
        if problem and not self.cluster_mode:
            raise ValueError(f"router_ip: {problem}")
        return self

    def router_problem(self) -> str | None:
        """Why the configured router address does not fit the pod range, or None."""
        return router_ip_problem(self.pod_cidr, self.router_ip) if self.router_ip else None

    @property
    def cluster_mode(self) -> bool:
        """True when the agent shares state with other nodes through a kvstore."""
        return self.kvstore == "etcd"

    @property
    def etcd_endpoints(self) -> list[str]:
        """The etcd client URLs of `etcd.address` (comma-separated)."""
        raw = self.kvstore_opt.get("etcd.address", "")
        return [u.strip().rstrip("/") for u in raw.split(",") if u.strip()]

    @field_validator("name_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c == "-" for c in value):
            raise ValueError("use letters, digits and '-' only")
        return value

    @property
    def input_limits(self) -> InputLimits:
        """The limits manifests and policy files are parsed with."""
        return InputLimits(
            max_depth=self.max_nesting_depth,
            max_objects=self.max_objects_per_request,
            max_rules=self.max_rules_per_policy,
            max_labels=self.max_labels_per_object,
        )

    @property
    def host_router_ip(self) -> str:
        """The node's address towards its pods (`router-ip`, by default the last of the pod
        range): identity `host`."""
        return router_ip(self.pod_cidr, self.router_ip)

    @property
    def host_router_ipv6(self) -> str:
        """The node's IPv6 address towards its pods (the last of the IPv6 range, identity
        `host`), "" with IPv6 off."""
        return router_ip(self.ipv6_range) if self.enable_ipv6 else ""

    @property
    def overlay_device(self) -> str:
        """The node's VXLAN device in cluster mode: 'cvx' + 12 hex digits of the prefix."""
        return "cvx" + hashlib.sha1(self.name_prefix.encode()).hexdigest()[:12]

    @property
    def socket_path(self) -> Path:
        """The REST API's unix socket."""
        return self.run_dir / SOCKET_NAME

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
