"""`cilia down`: remove everything Cilia created, even after the agent crashed.

Works from the persisted state and, as a safety net, from what the kernel
shows: namespaces named with the agent's prefix and the pin directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import NamedTuple

from cilia.agent.config import AgentConfig
from cilia.agent.state import load_state
from cilia.datapath import bpffs
from cilia.datapath.attach import pinned_devices
from cilia.datapath.host_address import remove_host_address
from cilia.datapath.netns import delete_netns, list_netns
from cilia.datapath.overlay import remove_overlay_device
from cilia.datapath.pod_network import remove_host_veth, remove_pod_network
from cilia.datapath.proxy_device import proxy_device_name, remove_proxy_device
from cilia.datapath.proxy_routing import remove_proxy_routing
from cilia.router import default_router_ip
from cilia.runtime.local import kill_netns_processes, remove_sandbox
from cilia.runtime.responders import ResponderHost
from cilia.runtime.supervisor import ContainerStatus

log = logging.getLogger("cilia.cleanup")


def read_pid(config: AgentConfig) -> int | None:
    """PID of the background agent, if its pid file names a live process."""
    try:
        pid = int(config.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def stop_agent(config: AgentConfig, timeout: float = 15.0) -> bool:
    """Stop a background agent (SIGTERM, then SIGKILL); True if one was running."""
    pid = read_pid(config)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def _ancestors() -> set[int]:
    """This process and its ancestors (`cilia up`, a shell...), which may carry the marker."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            break
        pid = int(stat[stat.rindex(b")") + 2 :].split()[1])
    return pids


STARTED_BY_VARIABLE = "CILIA_STARTED_BY"
"""Set by the agent in its own environment: its children inherit it, a shell does not."""


def agent_processes(config: AgentConfig) -> list[tuple[int, str]]:
    """Processes started by this agent (proxies, containers) that are still alive.

    They are recognised by the variable the agent sets for its children (see
    `STARTED_BY_VARIABLE`) in their environment; this process and its ancestors are
    never among them.
    """
    marker = f"{STARTED_BY_VARIABLE}={config.name_prefix}\0".encode()
    spared = _ancestors()
    found: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in spared:
            continue
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{entry}/environ").read_bytes():
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                found.append((int(entry), argv.decode(errors="replace").strip()))
    return found


class Removed(NamedTuple):
    """One thing removed: its kind (for counts) and a line naming it."""

    kind: str
    text: str


def remove_everything(config: AgentConfig) -> list[str]:
    """Delete pods, namespaces, devices, routes, pins and state; returns what was removed."""
    return [r.text for r in remove_state(config)]


def remove_state(config: AgentConfig, *, starting: bool = False) -> list[Removed]:
    """Delete what this agent left: pods, runtime endpoints' network, namespaces, processes,
    devices, routes, pins and state files (`cilia down`, and `--clean-state` on start).

    `starting`: an agent about to start cleans up before itself; its run directory (pid
    file, log) and the compiled objects, which are keyed by their sources' hash, stay.
    """
    removed: list[Removed] = []
    try:
        state = load_state(config.state_file) or {}
    except ValueError as exc:  # unreadable state: what the kernel shows is still removed
        log.warning("state file %s is unreadable (%s); removing it", config.state_file, exc)
        state = {}
    if state.get("pod_cidr"):  # in cluster mode the range came from the store
        config = config.model_copy(update={"pod_cidr": state["pod_cidr"]})
    responders = ResponderHost.of(config.run_dir, config.state_dir, state)
    for ep in state.get("endpoints", []):
        # A runtime's container keeps running: only its Cilia network goes.
        local = ep.get("runtime", "local") == "local"
        if local:
            containers = [ContainerStatus.from_dict(c) for c in ep.get("containers", [])]
            remove_sandbox(os.path.basename(ep["netns"]), containers, responders)
        remove_pod_network(ep["netns"], ep["ifname"], ep["ipv4"], ep.get("ipv6", ""))
        what = "pod" if local else f"{ep['runtime']} endpoint"
        removed.append(
            Removed(
                "pod" if local else "endpoint",
                f"{what} {ep['namespace']}/{ep['pod']} ({ep['netns']}, {ep['ifname']})",
            )
        )
    if responders.record is not None and responders.running():
        removed.append(Removed("process", f"responder host {responders.record.pid}"))
    responders.shutdown()
    for name in list_netns():
        if name.startswith(f"{config.name_prefix}_"):
            kill_netns_processes(name)
            delete_netns(name)
            removed.append(Removed("netns", f"netns {name}"))
    # Without a state file (lost, unreadable), the link pins still name the devices: a
    # runtime container's veth, whose namespace is not ours, is found that way.
    pins = bpffs.host_view(config.bpf_dir, config.host_proc)
    for ifname, ifindex in pinned_devices(pins / "links").items():
        if ifname.startswith("lxc") and remove_host_veth(ifname, ifindex):
            removed.append(Removed("device", f"device {ifname} (attached, not in the state)"))
    for pid, argv in agent_processes(config):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        removed.append(Removed("process", f"process {pid} ({argv})"))
    if (config.state_dir / "proxy").exists():
        remove_proxy_routing()
        removed.append(Removed("route", "proxy routing rule"))
    if remove_proxy_device(proxy_device_name(config.name_prefix)):
        removed.append(Removed("device", f"device {proxy_device_name(config.name_prefix)}"))
    if remove_overlay_device(config.overlay_device):
        removed.append(Removed("device", f"device {config.overlay_device} (and its routes)"))
    routers = {config.host_router_ip, state.get("router_ip") or config.host_router_ip}
    # The IPv6 router of the configured range goes whether IPv6 is on now or not.
    routers |= {ip for ip in (default_router_ip(config.ipv6_range), state.get("router_ipv6")) if ip}
    for router in sorted(routers):
        if remove_host_address(router):
            removed.append(Removed("address", f"router address {router}"))
    if pins.exists():
        bpffs.remove_pins(pins)
        removed.append(Removed("pins", f"pins {pins}"))
    for path in (config.state_dir,) if starting else (config.state_dir, config.cache_dir):
        if path.exists():
            shutil.rmtree(path)
            removed.append(Removed("state", f"state {path}"))
    if not starting:
        for f in (config.pid_file, config.socket_path):
            f.unlink(missing_ok=True)
    return removed
