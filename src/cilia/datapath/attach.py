"""tcx attachment of the endpoint programs through pinned BPF links.

A pinned link keeps the program attached while no agent runs; a new agent
swaps its freshly loaded program in with BPF_LINK_UPDATE (atomic, no gap).
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from cilia.datapath import libbpf

Hooks = dict[str, tuple[str, int]]
"""Device hook -> (program, attach type)."""

HOOKS: Hooks = {
    # host-side veth of an endpoint
    "ingress": ("cilia_from_container", libbpf.BPF_TCX_INGRESS),
    "egress": ("cilia_to_container", libbpf.BPF_TCX_EGRESS),
}
PROXY_DEVICE_HOOKS: Hooks = {"ingress": ("cilia_from_host", libbpf.BPF_TCX_INGRESS)}
OVERLAY_HOOKS: Hooks = {
    # the VXLAN device towards other nodes
    "ingress": ("cilia_from_overlay", libbpf.BPF_TCX_INGRESS),
    "egress": ("cilia_to_overlay", libbpf.BPF_TCX_EGRESS),
}


def link_pin(links_dir: Path, ifname: str, hook: str) -> Path:
    """Where the link of one device hook is pinned."""
    return links_dir / f"{ifname}_{hook}"  # bpffs refuses dots in names


def attach_device(
    links_dir: Path, ifname: str, ifindex: int, prog_fds: dict[str, int], hooks: Hooks = HOOKS
) -> None:
    """Attach the programs of `hooks` to a device, reusing (and updating) pinned links."""
    links_dir.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    try:
        for hook, (prog, attach_type) in hooks.items():
            pin = link_pin(links_dir, ifname, hook)
            if pin.exists() and _update_pinned(pin, ifindex, prog_fds[prog]):
                continue
            pin.unlink(missing_ok=True)
            fd = libbpf.link_create(prog_fds[prog], ifindex, attach_type)
            try:
                libbpf.obj_pin(fd, str(pin))
                created.append(pin)
            finally:
                os.close(fd)
    except BaseException:
        for pin in created:
            pin.unlink(missing_ok=True)
        raise


def _update_pinned(pin: Path, ifindex: int, prog_fd: int) -> bool:
    """Swap the program of a live pinned link; False if the link is stale."""
    fd = libbpf.obj_get(str(pin))
    try:
        linked_ifindex, linked_prog = libbpf.link_target(fd)
        if linked_ifindex != ifindex:
            return False
        if linked_prog != libbpf.prog_id(prog_fd):
            libbpf.link_update(fd, prog_fd)
        return True
    finally:
        os.close(fd)


def is_attached(links_dir: Path, ifname: str, ifindex: int, hooks: Hooks = HOOKS) -> bool:
    """Are all `hooks` of the device served by live pinned links?"""
    for hook in hooks:
        pin = link_pin(links_dir, ifname, hook)
        if not pin.exists():
            return False
        fd = libbpf.obj_get(str(pin))
        try:
            if libbpf.link_target(fd)[0] != ifindex:
                return False
        finally:
            os.close(fd)
    return True


def detach_device(links_dir: Path, ifname: str, hooks: Hooks = HOOKS) -> None:
    """Remove the device's link pins; the programs detach when the last fd closes."""
    for hook in hooks:
        with suppress(FileNotFoundError):
            link_pin(links_dir, ifname, hook).unlink()


def pinned_devices(links_dir: Path) -> dict[str, int]:
    """Device name -> ifindex of each pinned link's device (0 once the device is gone)."""
    found: dict[str, int] = {}
    if not links_dir.is_dir():
        return found
    for pin in sorted(links_dir.iterdir()):
        ifname, sep, _ = pin.name.rpartition("_")
        if not sep:
            continue
        try:
            fd = libbpf.obj_get(str(pin))
        except OSError:
            continue
        try:
            found[ifname] = max(found.get(ifname, 0), libbpf.link_target(fd)[0])
        except OSError:
            pass
        finally:
            os.close(fd)
    return found
