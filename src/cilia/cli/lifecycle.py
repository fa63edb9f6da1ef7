"""`cilia agent|up|down`: run, start and remove the local agent."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import click

from cilia.cli.api import fail
from cilia.cli.client import Client
from cilia.cli.output import F

if TYPE_CHECKING:
    from cilia.agent.config import AgentConfig


def _config(flags: dict[str, Any] | None = None) -> AgentConfig:
    """The agent's configuration: only for the commands that run or remove the agent (it
    imports pydantic, which costs more than a request to the agent)."""
    from cilia.agent.config import AgentConfig

    try:
        return AgentConfig.load(_overrides(flags or {}))
    except ValueError as exc:
        fail(f"invalid agent configuration: {exc}")


_AGENT_FLAGS = {
    # flag -> AgentConfig field; each may also come from CILIA_<FIELD>.
    "--pod-cidr": "pod_cidr",
    "--router-ip": "router_ip",
    "--enable-ipv6": "enable_ipv6",
    "--ipv6-range": "ipv6_range",
    "--ipv6-cluster-alloc-cidr": "ipv6_cluster_alloc_cidr",
    "--service-cidr": "service_cidr",
    "--ipv6-service-cidr": "ipv6_service_cidr",
    "--node-port-range": "node_port_range",
    "--prometheus-serve-addr": "prometheus_serve_addr",
    "--legacy-host-allows-world": "legacy_host_allows_world",
    "--allow-localhost": "allow_localhost",
    "--kvstore": "kvstore",
    "--node-name": "node_name",
    "--underlay-device": "underlay_device",
    "--cluster-pod-cidr": "cluster_pod_cidr",
    "--lease-ttl": "lease_ttl",
    "--lease-keepalive": "lease_keepalive",
    "--identity-gc-interval": "identity_gc_interval",
    "--mtu": "mtu",
    "--docker-plugin-name": "docker_plugin_name",
    "--config-file": "config_file",
}


def config_file_option(fn: F) -> F:
    """--config-file, for every command that reads the agent's configuration."""
    return click.option(
        "--config-file",
        type=click.Path(dir_okay=False),
        help="YAML file of agent settings, keys as the flags (pod-cidr: ...; also"
        " CILIA_CONFIG_FILE). Flags > CILIA_* environment > file > defaults.",
    )(fn)


def agent_options(fn: F) -> F:
    """Options shared by `agent` and `up` (which hands them to the agent it starts)."""
    fn = config_file_option(fn)
    fn = click.option(
        "--clean-state",
        is_flag=True,
        default=None,
        help="Remove every earlier state of this agent (pods, devices, namespaces, pins,"
        " state files, proxies) before starting, instead of restoring it.",
    )(fn)
    fn = click.option("--pod-cidr", help="IPv4 range of local pods (default 10.200.0.0/16).")(fn)
    fn = click.option(
        "--router-ip",
        help="The node's address towards its pods, inside the pod range (default: its last"
        " usable address). Changing it across a restart keeps running pods connected.",
    )(fn)
    fn = click.option(
        "--enable-ipv6",
        type=click.Choice(["true", "false"]),
        help="Dual stack: every pod gets an IPv6 address too (default false).",
    )(fn)
    fn = click.option(
        "--ipv6-range",
        help="IPv6 range of local pods, /96 or wider (default fd00:c1a::/96).",
    )(fn)
    fn = click.option(
        "--ipv6-cluster-alloc-cidr",
        help="IPv6 /64 the nodes' /96 pod ranges are carved from (cluster mode; default"
        " fd00:c1a::/64).",
    )(fn)
    fn = click.option(
        "--service-cidr",
        help="IPv4 range Services get their ClusterIP from (default 10.96.0.0/16).",
    )(fn)
    fn = click.option(
        "--ipv6-service-cidr",
        help="IPv6 range of ClusterIPs of IPv6 Services (with IPv6 on; default fd00:c1a:5e::/112).",
    )(fn)
    fn = click.option(
        "--node-port-range",
        help="Ports NodePort Services get, LOW-HIGH (default 30000-32767).",
    )(fn)
    fn = click.option(
        "--prometheus-serve-addr",
        help="Serve Prometheus metrics on HOST:PORT (off unless given).",
    )(fn)
    fn = click.option(
        "--legacy-host-allows-world",
        type=click.Choice(["true", "false"]),
        help="Policies allowing host also allow world (the 1.0 behaviour).",
    )(fn)
    fn = click.option(
        "--allow-localhost",
        type=click.Choice(["policy", "always"]),
        help="'always': the node reaches every local pod whatever the policy (like"
        " Cilium's --allow-localhost=always, for kubelet-style health checks); default policy.",
    )(fn)
    fn = click.option(
        "--kvstore",
        type=click.Choice(["etcd"]),
        help="Cluster mode: share identities, nodes, ipcache and objects through etcd.",
    )(fn)
    fn = click.option(
        "--kvstore-opt",
        multiple=True,
        metavar="KEY=VALUE",
        help="kvstore option (repeatable): etcd.address=URL[,URL...].",
    )(fn)
    fn = click.option("--node-name", help="This node's name in the cluster (default: hostname).")(
        fn
    )
    fn = click.option(
        "--underlay-device", help="Device whose IPv4 address is this node's tunnel endpoint."
    )(fn)
    fn = click.option(
        "--cluster-pod-cidr", help="Range the nodes' pod ranges are carved from (cluster mode)."
    )(fn)
    fn = click.option("--lease-ttl", help="Seconds the node's etcd lease lives (default 900).")(fn)
    fn = click.option("--lease-keepalive", help="Seconds between lease refreshes (default 300).")(
        fn
    )
    fn = click.option(
        "--identity-gc-interval", help="Seconds between unused-identity collections (default 600)."
    )(fn)
    fn = click.option("--mtu", help="MTU of pod devices (default 1500).")(fn)
    fn = click.option(
        "--container-runtime",
        multiple=True,
        help="Runtimes to watch for labels (repeatable or comma list): auto (default:"
        " docker, containerd and cri-o at their default sockets, those that answer),"
        " containerd, docker, crio, none.",
    )(fn)
    fn = click.option(
        "--container-runtime-endpoint",
        multiple=True,
        metavar="RUNTIME=PATH",
        help="Socket of a runtime (repeatable), e.g. containerd=/run/containerd/containerd.sock.",
    )(fn)
    fn = click.option(
        "--docker-plugin-name", help="Name of the Docker network/IPAM driver (default cilia)."
    )(fn)
    return fn


def _overrides(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        field: v for field in _AGENT_FLAGS.values() if (v := values.get(field)) is not None
    }
    if values.get("clean_state"):
        out["clean_state"] = True
    if values.get("kvstore_opt"):
        out["kvstore_opt"] = _key_values(values["kvstore_opt"], "--kvstore-opt")
    if values.get("container_runtime"):
        out["container_runtime"] = list(values["container_runtime"])
    if values.get("container_runtime_endpoint"):
        pairs = values["container_runtime_endpoint"]
        out["container_runtime_endpoint"] = _key_values(pairs, "--container-runtime-endpoint")
    return out


def _key_values(pairs: tuple[str, ...], option: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for pair in pairs:
        for item in pair.split(",") if option == "--container-runtime-endpoint" else [pair]:
            key, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=option)
            opts[key.strip()] = value.strip()
    return opts


@click.command()
@agent_options
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def agent(log_level: str, **flags: Any) -> None:
    """Run the agent in the foreground."""
    from cilia.agent.server import run_agent

    run_agent(_config(flags), log_level)


@click.command()
@agent_options
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for health.")
def up(timeout: float, **flags: Any) -> None:
    """Start the agent in the background and wait until it is healthy."""
    import subprocess

    from cilia.agent.cleanup import read_pid

    cfg = _config(flags)  # refuses a bad file or value before anything starts
    client = Client(cfg.socket_path)
    if read_pid(cfg) is not None and client.healthy():
        if flags.get("clean_state"):
            fail(f"--clean-state: an agent is running (pid {read_pid(cfg)}); stop it first")
        click.echo(f"agent already running (pid {read_pid(cfg)}, socket {cfg.socket_path})")
        return
    cfg.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = [sys.executable, "-m", "cilia.cli.main", "agent"]
    for flag, field in _AGENT_FLAGS.items():
        if flags.get(field) is not None:
            argv += [flag, str(cfg.config_file if field == "config_file" else flags[field])]
    if flags.get("clean_state"):
        argv.append("--clean-state")
    for option in ("kvstore_opt", "container_runtime", "container_runtime_endpoint"):
        for value in flags.get(option) or ():
            argv += ["--" + option.replace("_", "-"), value]
    with open(cfg.log_file, "ab") as logf:
        proc = subprocess.Popen(
            argv,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    cfg.pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = cfg.log_file.read_text(errors="replace").strip().splitlines()
            why = f": {lines[-1]}" if lines else ""
            fail(f"agent exited with code {proc.returncode}{why} (log {cfg.log_file})")
        if client.healthy():
            click.echo(
                f"agent running (pid {proc.pid}, socket {cfg.socket_path}, log {cfg.log_file})"
            )
            return
        time.sleep(0.1)
    fail(f"agent not healthy after {timeout:.0f}s; see {cfg.log_file}")


@click.command()
@config_file_option
def down(config_file: str | None) -> None:
    """Stop the agent and remove every pod, device, route, pin and state file Cilia made."""
    from cilia.agent.cleanup import remove_everything, stop_agent

    cfg = _config({"config_file": config_file})
    if stop_agent(cfg):
        click.echo("agent stopped")
    for line in remove_everything(cfg):
        click.echo(f"removed {line}")
    click.echo("clean")
