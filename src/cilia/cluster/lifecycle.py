"""Build, inspect and remove a cluster on this machine (`cilia cluster up|status|down`).

`up` records every name in the state file before creating the object, and on any
failure removes what it built; `down` removes everything the state file names and
then sweeps whatever still carries the cluster's prefix, so it also works after a
kill -9 of any part and when run twice.
"""

from __future__ import annotations

import secrets
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cilia.agent.config import AgentConfig
from cilia.cluster.etcd import EtcdServer, health_error
from cilia.cluster.nodes import (
    PREFIX_VARIABLE,
    agent_alive,
    agent_argv,
    agent_client,
    agent_status,
    clean_node,
    cluster_processes,
    kill_processes,
    plan_node,
    process_env,
    reach_from_node,
    start_agent,
    stop_agents,
    wait_healthy,
)
from cilia.cluster.state import ClusterError, ClusterState, EtcdState, NodeState, load_state
from cilia.cluster.underlay import (
    attach_node,
    create_bridge,
    free_subnet,
    remove_devices,
    subnet_lock,
)
from cilia.datapath import bpffs
from cilia.datapath.netns import delete_netns, list_netns, netns_exists
from cilia.kvstore.client import Etcd, KvstoreError
from cilia.runtime.local import kill_netns_processes

Report = Callable[[str], None]

AGENT_STATUS_KEYS = ("cilia", "node", "pod-cidr", "kvstore", "error")
"""What `cluster status` shows of each agent's /v1/status."""

UNIX_PATH_MAX = 107
"""Longest path a unix socket can bind to."""
KVSTORE_PREFIX = "cilia/"
"""Every key the agents write starts with it; `down` deletes it from an external etcd."""


@dataclass(frozen=True)
class ClusterSpec:
    """What `cilia cluster up` is asked to build."""

    nodes: int = 3
    kvstore_endpoints: tuple[str, ...] = ()
    """An external etcd (reachable from the underlay, dedicated to this cluster); empty:
    start one."""
    cluster_pod_cidr: str = str(AgentConfig.model_fields["cluster_pod_cidr"].default)
    lease_ttl: int | None = None
    lease_keepalive: float | None = None
    agent_args: tuple[str, ...] = ()
    """More agent flags, passed to every agent as they are."""
    timeout: float = 60.0
    """Seconds to wait for the agents to become healthy."""

    def agent_flags(self) -> list[str]:
        flags = ["--cluster-pod-cidr", self.cluster_pod_cidr]
        if self.lease_ttl is not None:
            flags += ["--lease-ttl", str(self.lease_ttl)]
        if self.lease_keepalive is not None:
            flags += ["--lease-keepalive", str(self.lease_keepalive)]
        return flags + list(self.agent_args)

    def validate(self) -> None:
        """ClusterError if the agents would refuse these settings (checked before building)."""
        settings: dict[str, Any] = {"cluster_pod_cidr": self.cluster_pod_cidr}
        if self.lease_ttl is not None:
            settings["lease_ttl"] = self.lease_ttl
        if self.lease_keepalive is not None:
            settings["lease_keepalive"] = self.lease_keepalive
        try:
            AgentConfig(
                kvstore="etcd", kvstore_opt={"etcd.address": "http://192.0.2.1:2379"}, **settings
            )
        except ValidationError as exc:
            reasons = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
                for e in exc.errors()
            )
            raise ClusterError(f"invalid agent settings: {reasons}") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def etcd_server(state: ClusterState) -> EtcdServer:
    """The cluster's own etcd (not an external one), to stop and start it by its data
    directory: `up` and `down` use it, and so can a test of an etcd outage."""
    etcd = state.etcd
    assert etcd is not None and etcd.directory and etcd.client_port and etcd.peer_port
    return EtcdServer(
        Path(etcd.directory),
        etcd.client_port,
        etcd.peer_port,
        hosts=tuple(etcd.hosts),
        name=f"{state.prefix}-etcd",
        env=process_env({PREFIX_VARIABLE: f"{state.prefix}-etcd"}),  # the sweep finds it
    )


def _plan(state: ClusterState, spec: ClusterSpec) -> None:
    directory = Path(state.directory)
    subnet = free_subnet(state.tag)
    state.underlay_cidr = str(subnet)
    state.bridge = f"{state.device_prefix}br"
    state.bridge_ip = str(subnet[1])
    state.nodes = [
        plan_node(directory, state.prefix, state.device_prefix, i, subnet)
        for i in range(1, spec.nodes + 1)
    ]
    socket_path = state.nodes[-1].config.socket_path
    if len(str(socket_path)) > UNIX_PATH_MAX:
        raise ClusterError(
            f"{directory} is too long: the agents' sockets ({socket_path}) would exceed "
            f"{UNIX_PATH_MAX} characters"
        )
    if spec.kvstore_endpoints:
        urls = [u.rstrip("/") for u in spec.kvstore_endpoints]
        state.etcd = EtcdState(external=True, endpoints=urls, node_endpoints=urls)
    else:
        port = _free_port()
        state.etcd = EtcdState(
            external=False,
            endpoints=[f"http://127.0.0.1:{port}"],
            node_endpoints=[f"http://{state.bridge_ip}:{port}"],
            directory=str(directory / "etcd"),
            client_port=port,
            peer_port=_free_port(),
            hosts=["127.0.0.1", state.bridge_ip],
        )


def _start_etcd(state: ClusterState, report: Report) -> None:
    etcd = state.etcd
    assert etcd is not None
    if etcd.external:
        errors = [f"{u}: {e}" for u in etcd.endpoints if (e := health_error(u, 2.0)) is not None]
        if len(errors) == len(etcd.endpoints):
            raise ClusterError(f"the kvstore endpoint does not answer: {'; '.join(errors)}")
        report(f"etcd: external, {', '.join(etcd.endpoints)}")
        return
    server = etcd_server(state)
    try:
        server.start()
    finally:
        etcd.pid = server.pid()
        state.save()
    report(f"etcd: started (pid {etcd.pid}, {', '.join(server.client_urls)})")


def _build(state: ClusterState, spec: ClusterSpec, report: Report) -> None:
    with subnet_lock():
        _plan(state, spec)
        state.save()
        create_bridge(state.bridge, state.bridge_ip, 24, _bridge_mac(state.tag))
    report(f"underlay: bridge {state.bridge} {state.bridge_ip}/24")
    _start_etcd(state, report)
    assert state.etcd is not None
    for node in state.nodes:
        attach_node(
            state.bridge, node.host_device, node.netns, node.underlay_ip, 24, state.bridge_ip
        )
        report(f"{node.name}: namespace {node.netns}, {node.underlay_device} {node.underlay_ip}")
    for node in state.nodes:
        reach_from_node(node, state.etcd.node_endpoints)
    try:
        for node in state.nodes:
            node.agent_argv = agent_argv(node, state.etcd.node_endpoints, spec.agent_flags())
            start_agent(node)
    finally:
        state.save()
    wait_healthy(state.nodes, spec.timeout, report)


def _bridge_mac(tag: str) -> str:
    return "02:" + ":".join(tag[i : i + 2] for i in range(0, 6, 2)) + ":00:01"


def up(directory: Path, spec: ClusterSpec, report: Report) -> ClusterState:
    """Build the cluster; on failure remove everything built and raise ClusterError."""
    existing = load_state(directory)
    if existing is not None:
        raise ClusterError(
            f"a cluster ({existing.prefix}) is already in {directory}; "
            "remove it with `cilia cluster down` first"
        )
    spec.validate()
    tag = secrets.token_hex(3)
    state = ClusterState(
        tag=tag,
        prefix=f"cilia-c{tag}",
        device_prefix=f"c{tag}",
        directory=str(directory),
        cluster_pod_cidr=spec.cluster_pod_cidr,
    )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    state.save()
    try:
        _build(state, spec, report)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            reason = "interrupted"
        elif isinstance(exc, ClusterError):
            reason = str(exc)
        else:
            reason = f"{type(exc).__name__}: {exc}"
        report(f"cluster up failed ({reason}); removing what was built")
        try:
            down(directory, report)
        except Exception as cleanup_exc:
            report(f"removal failed too: {type(cleanup_exc).__name__}: {cleanup_exc}")
        if isinstance(exc, Exception):
            raise ClusterError(reason) from exc
        raise
    report(f"cluster {state.prefix} up: {len(state.nodes)} nodes, state in {state.path}")
    return state


def _remove_etcd(state: ClusterState, report: Report) -> bool:
    etcd = state.etcd
    if etcd is None:
        return True
    if not etcd.external:
        if etcd.directory and etcd.client_port and etcd.peer_port:
            server = etcd_server(state)
            pid = server.pid()
            server.remove()
            report(f"removed etcd{f' (pid {pid})' if pid else ''} and its data {etcd.directory}")
        return True
    try:
        store = Etcd(etcd.endpoints)
        try:
            deleted = store.delete_prefix(KVSTORE_PREFIX)
        finally:
            store.close()
    except (KvstoreError, ValueError) as exc:
        report(f"warning: could not delete the cluster's keys {KVSTORE_PREFIX}*: {exc}")
        return False
    report(f"removed {deleted} keys {KVSTORE_PREFIX}* at {', '.join(etcd.endpoints)}")
    return True


def _sweep(state: ClusterState, report: Report) -> None:
    """Whatever still carries the cluster's prefix: processes, namespaces, pins, devices."""
    pids = cluster_processes(state.prefix)
    kill_processes(pids)
    _report_removed(report, [f"process {pid}" for pid in pids])
    for name in list_netns():
        if name.startswith(f"{state.prefix}-"):
            kill_netns_processes(name)
            delete_netns(name)
            report(f"removed netns {name}")
    for pins in sorted(bpffs.BPFFS.glob(f"{state.prefix}-*")):
        bpffs.remove_pins(pins)
        report(f"removed pins {pins}")
    _report_removed(report, [f"device {d}" for d in remove_devices(state.device_prefix)])


def _report_removed(report: Report, removed: list[str]) -> None:
    for line in removed:
        report(f"removed {line}")


def down(directory: Path, report: Report) -> bool:
    """Remove the cluster in `directory`; False if something could not be removed."""
    state = load_state(directory)
    if state is None:
        if directory.exists():
            shutil.rmtree(directory)
            report(f"removed {directory}")
        else:
            report(f"no cluster in {directory}")
        return True
    steps: list[tuple[str, Callable[[], object]]] = [
        ("stop the agents", lambda: _report_removed(report, stop_agents(state.nodes))),
        *(
            (f"clean {node.name}", lambda node=node: _report_removed(report, clean_node(node)))
            for node in state.nodes
        ),
        ("remove etcd", lambda: _remove_etcd(state, report)),
        ("sweep", lambda: _sweep(state, report)),
    ]
    complete = True
    for what, step in steps:  # each step is attempted, whatever happened to the others
        try:
            complete = step() is not False and complete
        except Exception as exc:
            report(f"warning: could not {what}: {type(exc).__name__}: {exc}")
            complete = False
    shutil.rmtree(directory, ignore_errors=True)
    report(f"removed {directory}")
    return complete


def status(directory: Path) -> dict[str, Any]:
    """Health of etcd and of every node, with what each agent's /v1/status reports."""
    state = load_state(directory)
    if state is None:
        raise ClusterError(f"no cluster in {directory} (start one with `cilia cluster up`)")
    etcd = state.etcd
    etcd_out: dict[str, Any] = {"healthy": False}
    if etcd is not None:
        errors = {u: health_error(u) for u in etcd.endpoints}
        etcd_out = {
            "external": etcd.external,
            "endpoints": etcd.endpoints,
            "node-endpoints": etcd.node_endpoints,
            "pid": etcd.pid,
            "healthy": any(e is None for e in errors.values()),
            "errors": {u: e for u, e in errors.items() if e is not None},
        }
    nodes = [_node_status(n) for n in state.nodes]
    return {
        "cluster": state.prefix,
        "directory": state.directory,
        "underlay": {"bridge": state.bridge, "cidr": state.underlay_cidr},
        "etcd": etcd_out,
        "nodes": nodes,
        "healthy": etcd_out["healthy"] and bool(nodes) and all(n["healthy"] for n in nodes),
    }


def _node_status(node: NodeState) -> dict[str, Any]:
    alive = agent_alive(node)
    healthy = alive and agent_client(node, timeout=2.0).healthy()
    out: dict[str, Any] = {
        "name": node.name,
        "netns": node.netns,
        "netns-exists": netns_exists(node.netns),
        "underlay-device": node.underlay_device,
        "underlay-ip": node.underlay_ip,
        "socket": str(node.config.socket_path),
        "agent-pid": node.agent_pid,
        "agent-alive": alive,
        "agent-healthy": healthy,
    }
    if healthy:
        agent = agent_status(node)
        out["agent"] = {k: agent[k] for k in AGENT_STATUS_KEYS if k in agent}
    agent_out = out.get("agent", {})
    kvstore = agent_out.get("kvstore")
    kvstore_ok = not isinstance(kvstore, dict) or kvstore.get("healthy", True)
    out["healthy"] = healthy and out["netns-exists"] and "error" not in agent_out and kvstore_ok
    return out
