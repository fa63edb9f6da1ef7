"""The BPF filesystem: where the pins live, mounting it, and removing Cilia's pins.

Pins must outlive the agent. In the host's mount namespace that is any bpffs; an
agent running in a mount namespace of its own (a container's, or `unshare -m`)
would pin into a bpffs instance of that namespace, gone with it, so it pins into
the host's bpffs instead, reached through `<host proc>/root` (a process of the
host's namespace: PID 1 by default, `/hostproc/1` in a container): a path walk
through that link continues in the host's mount tree. A bind mount of it into our
namespace is not an option: the kernel refuses bind mounts (and open_tree clones)
of another namespace's mounts.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

BPFFS = Path("/sys/fs/bpf")
log = logging.getLogger("cilia.datapath")


class BpffsError(RuntimeError):
    """The pin directory is not, and cannot be put, on a bpf filesystem."""


def own_mount_namespace(host_proc: Path) -> bool | None:
    """Does this process live in a mount namespace other than the host's (that of the
    process `host_proc`)? None when that process cannot be inspected."""
    try:
        host = os.stat(host_proc / "ns" / "mnt").st_ino
    except OSError:
        return None
    return os.stat("/proc/self/ns/mnt").st_ino != host


def filesystem_of(path: Path, mounts: str = "/proc/self/mounts") -> tuple[str, str]:
    """(mount point, filesystem type) of the mount `path` is on, from a mounts table."""
    best = ("/", "")
    with open(mounts) as table:
        for line in table:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            if path.is_relative_to(point) and len(point) >= len(best[0]):
                best = (point, fields[2])
    return best


def bpffs_mounted(path: Path = BPFFS, mounts: str = "/proc/self/mounts") -> bool:
    """Is a bpf filesystem mounted at path?"""
    return filesystem_of(path, mounts) == (str(path), "bpf")


def ensure_bpffs(path: Path = BPFFS) -> None:
    """Mount bpffs at path unless it already is (idempotent)."""
    if bpffs_mounted(path):
        return
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], check=True, capture_output=True)


def _mount_in_host(path: Path, host_proc: Path) -> None:
    """Mount bpffs at `path` in the host's mount namespace."""
    (host_proc / "root" / path.relative_to("/")).mkdir(parents=True, exist_ok=True)
    argv = ["nsenter", f"--mount={host_proc}/ns/mnt", "mount", "-t", "bpf", "bpf", str(path)]
    subprocess.run(argv, check=True, capture_output=True, text=True)


def pin_dir(bpf_dir: Path, host_proc: Path) -> Path:
    """The path to pin under for the configured `bpf_dir`: itself in the host's mount
    namespace, else the host's same path through `host_proc`/root. Mounts bpffs at
    /sys/fs/bpf (in the host's namespace) when `bpf_dir` is below it and nothing is
    mounted there; raises BpffsError when the pins would land on another filesystem."""
    own = own_mount_namespace(host_proc)
    if own is None:
        log.warning(
            "cannot inspect %s/ns/mnt: taking this mount namespace for the host's", host_proc
        )
    mounts = str(host_proc / "mounts") if own else "/proc/self/mounts"
    if bpf_dir.is_relative_to(BPFFS) and not bpffs_mounted(BPFFS, mounts):
        try:
            _mount_in_host(BPFFS, host_proc) if own else ensure_bpffs(BPFFS)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            raise BpffsError(
                f"no bpf filesystem at {BPFFS} and mounting one failed: {detail}"
            ) from None
    point, fstype = filesystem_of(bpf_dir, mounts)
    if fstype != "bpf":
        where = "the host's mount namespace" if own else "this mount namespace"
        raise BpffsError(
            f"bpf dir {bpf_dir} is on {point} ({fstype or 'unknown'}) in {where}, not on a bpf "
            f"filesystem: pins there would not outlive the agent (choose a bpf-dir, "
            f"CILIA_BPF_DIR, below {BPFFS}, or mount a bpffs where it is)"
        )
    return host_view(bpf_dir, host_proc)


def host_view(bpf_dir: Path, host_proc: Path) -> Path:
    """`bpf_dir` as the host's mount namespace has it, seen from this process."""
    root = host_proc / "root"
    if bpf_dir.is_relative_to(root) or not own_mount_namespace(host_proc):
        return bpf_dir
    return root / bpf_dir.relative_to("/")


def remove_pins(root: Path) -> None:
    """Remove a pin directory tree; unpinning releases maps and links nobody holds."""
    if root.exists():
        shutil.rmtree(root)
