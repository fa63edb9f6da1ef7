"""Compile the C datapath with clang-19, cached by a hash of its sources."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger("cilia.datapath")

CLANG = "clang-19"
_BASE_FLAGS = ["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu"]


class CompileError(RuntimeError):
    """clang refused the datapath sources; the message carries its output."""


def default_source_dir() -> Path:
    """The repository's bpf/ directory (the package is installed in place)."""
    return Path(__file__).resolve().parents[3] / "bpf"


def _source_hash(src_dir: Path, flags: list[str]) -> str:
    h = hashlib.sha256(" ".join(flags).encode())
    for path in sorted(src_dir.rglob("*")):
        if path.suffix in (".c", ".h"):
            h.update(str(path.relative_to(src_dir)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def compile_object(src_dir: Path, cache_dir: Path, main: str = "bpf_lxc.c") -> Path:
    """Return the object file for src_dir/main, compiling only if its sources changed."""
    if shutil.which(CLANG) is None:
        raise CompileError(f"{CLANG} not found: run scripts/install.sh (apt package clang-19)")
    flags = [*_BASE_FLAGS, f"-I{src_dir}"]
    digest = _source_hash(src_dir, flags)
    obj = cache_dir / f"{Path(main).stem}-{digest}.o"
    if obj.exists():
        return obj
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = obj.with_suffix(f".{os.getpid()}.tmp")
    cmd = [CLANG, *flags, "-c", str(src_dir / main), "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise CompileError(f"compiling {main} failed:\n{proc.stderr.strip()}")
    tmp.replace(obj)
    log.info("compiled %s -> %s", main, obj.name)
    return obj
