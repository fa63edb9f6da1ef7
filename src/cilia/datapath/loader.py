"""Load the datapath object with its maps pinned (and reused across restarts)."""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

from cilia.datapath import libbpf

MAP_NAMES = (
    "cilia_endpoints",
    "cilia_lxc_ip",
    "cilia_ipcache",
    "cilia_tunnel",
    "cilia_policy",
    "cilia_ct",
    "cilia_metrics",
    "cilia_config",
    "cilia_events",
    "cilia_events_lost",
    "cilia_lb_services",
    "cilia_lb_slots",
    "cilia_lb_backends",
    "cilia_lb_revnat",
    "cilia_lb_return",
    "cilia_lb_sock",
)
PROGRAMS = (
    "cilia_from_container",
    "cilia_to_container",
    "cilia_from_host",
    "cilia_from_overlay",
    "cilia_to_overlay",
    "cilia_from_netdev",
    "cilia_to_netdev",
    "cilia_sock_connect4",
    "cilia_sock_sendmsg4",
    "cilia_sock_recvmsg4",
    "cilia_sock_connect6",
    "cilia_sock_sendmsg6",
    "cilia_sock_recvmsg6",
)

log = logging.getLogger("cilia.datapath")


class LoadedObject:
    """An opened and loaded BPF object; its maps are pinned under maps_dir."""

    def __init__(
        self, obj_path: Path, maps_dir: Path, max_entries: dict[str, int] | None = None
    ) -> None:
        maps_dir.mkdir(parents=True, exist_ok=True)
        obj = libbpf.bpf_object__open_file(str(obj_path).encode(), None)
        if not obj:
            err = ctypes.get_errno()
            raise libbpf.BpfError(err, f"open {obj_path}: {os.strerror(err)}")
        self._obj: int | None = obj
        try:
            for name in MAP_NAMES:
                m = self._find_map(name)
                if max_entries and name in max_entries:
                    libbpf.check(
                        libbpf.bpf_map__set_max_entries(m, max_entries[name]),
                        f"set max entries of {name}",
                    )
                # An existing pin of a compatible map is reused, else created.
                _unpin_if_layout_changed(m, maps_dir / name)
                libbpf.check(
                    libbpf.bpf_map__set_pin_path(m, str(maps_dir / name).encode()),
                    f"set pin path of {name}",
                )
            libbpf.check(libbpf.bpf_object__load(obj), f"load {obj_path.name}")
            self.prog_fds = {name: self._prog_fd(name) for name in PROGRAMS}
        except BaseException:
            self.close()
            raise

    def _find_map(self, name: str) -> int:
        m = libbpf.bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise libbpf.BpfError(2, f"map {name} not in object")
        return int(m)

    def _prog_fd(self, name: str) -> int:
        prog = libbpf.bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise libbpf.BpfError(2, f"program {name} not in object")
        return libbpf.check(libbpf.bpf_program__fd(prog), f"fd of {name}")

    def close(self) -> None:
        """Release programs and map fds (pins stay)."""
        if self._obj:
            libbpf.bpf_object__close(self._obj)
            self._obj = None


def _unpin_if_layout_changed(m: int, pin: Path) -> None:
    """Drop the pin of a map an older datapath made with other key or value sizes.

    libbpf refuses to reuse it; the new map starts empty and the agent refills
    it (the old programs keep the old map until their links are updated).
    """
    if not pin.exists():
        return
    fd = libbpf.obj_get(str(pin))
    try:
        pinned = libbpf.map_entry_sizes(fd)
    finally:
        os.close(fd)
    wanted = (int(libbpf.bpf_map__key_size(m)), int(libbpf.bpf_map__value_size(m)))
    if pinned != wanted:
        log.warning("map %s changed layout %s -> %s: replacing its pin", pin.name, pinned, wanted)
        pin.unlink()
