"""The BPF filesystem: mounting it and laying out Cilia's pins."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

BPFFS = Path("/sys/fs/bpf")


def bpffs_mounted(path: Path = BPFFS) -> bool:
    """Is a bpf filesystem mounted at path?"""
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(path) and line.split()[2] == "bpf" for line in mounts)


def ensure_bpffs(path: Path = BPFFS) -> None:
    """Mount bpffs at path unless it already is (idempotent)."""
    if bpffs_mounted(path):
        return
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], check=True, capture_output=True)


def remove_pins(root: Path) -> None:
    """Remove a pin directory tree; unpinning releases maps and links nobody holds."""
    if root.exists():
        shutil.rmtree(root)
