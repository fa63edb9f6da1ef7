"""A thin ctypes binding of the system libbpf (1.1+).

Written by hand because no maintained Python package loads objects and attaches
them with tcx on this platform (pylibbpf cannot attach to tc, pythonbpf needs a
newer Python and LLVM). Only the handful of calls Cilia needs are bound here;
everything above this module speaks Python.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Any

log = logging.getLogger("cilia.libbpf")

BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_ANY = 0
BPF_NOEXIST = 1

_LIBBPF_PATHS = ("libbpf.so.1", "/usr/lib/x86_64-linux-gnu/libbpf.so.1")


class BpfError(OSError):
    """A libbpf call failed; errno and the call are in the message."""


def _load() -> ctypes.CDLL:
    for path in _LIBBPF_PATHS:
        try:
            return ctypes.CDLL(path, use_errno=True)
        except OSError:
            continue
    found = ctypes.util.find_library("bpf")
    if found is None:
        raise BpfError("libbpf.so.1 not found: install libbpf-dev (or libbpf1)")
    return ctypes.CDLL(found, use_errno=True)


_lib = _load()
_libc = ctypes.CDLL(None, use_errno=True)

_vp = ctypes.c_void_p
_int = ctypes.c_int


def _sig(name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


bpf_object__open_file = _sig("bpf_object__open_file", _vp, ctypes.c_char_p, _vp)
bpf_object__load = _sig("bpf_object__load", _int, _vp)
bpf_object__close = _sig("bpf_object__close", None, _vp)
bpf_object__find_map_by_name = _sig("bpf_object__find_map_by_name", _vp, _vp, ctypes.c_char_p)
bpf_object__find_program_by_name = _sig(
    "bpf_object__find_program_by_name", _vp, _vp, ctypes.c_char_p
)
bpf_map__set_pin_path = _sig("bpf_map__set_pin_path", _int, _vp, ctypes.c_char_p)
bpf_map__set_max_entries = _sig("bpf_map__set_max_entries", _int, _vp, ctypes.c_uint32)
bpf_map__fd = _sig("bpf_map__fd", _int, _vp)
bpf_map__key_size = _sig("bpf_map__key_size", ctypes.c_uint32, _vp)
bpf_map__value_size = _sig("bpf_map__value_size", ctypes.c_uint32, _vp)
bpf_program__fd = _sig("bpf_program__fd", _int, _vp)
_bpf_link_create = _sig("bpf_link_create", _int, _int, _int, _int, _vp)
_bpf_link_update = _sig("bpf_link_update", _int, _int, _int, _vp)
_bpf_obj_pin = _sig("bpf_obj_pin", _int, _int, ctypes.c_char_p)
_bpf_obj_get = _sig("bpf_obj_get", _int, ctypes.c_char_p)
_bpf_map_update_elem = _sig("bpf_map_update_elem", _int, _int, _vp, _vp, ctypes.c_uint64)
_bpf_map_lookup_elem = _sig("bpf_map_lookup_elem", _int, _int, _vp, _vp)
_bpf_map_delete_elem = _sig("bpf_map_delete_elem", _int, _int, _vp)
_bpf_map_get_next_key = _sig("bpf_map_get_next_key", _int, _int, _vp, _vp)
_libbpf_num_possible_cpus = _sig("libbpf_num_possible_cpus", _int)

# libbpf's log callback receives a va_list; on x86-64 that is a pointer which
# vsnprintf accepts as is, so the message can be formatted without C glue.
_PRINT_FN = ctypes.CFUNCTYPE(_int, _int, ctypes.c_char_p, _vp)
_vsnprintf = _libc.vsnprintf
_vsnprintf.restype = _int
_vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, _vp]
_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


@_PRINT_FN  # type: ignore[untyped-decorator]
def _print(level: int, fmt: bytes, args: int) -> int:
    buf = ctypes.create_string_buffer(4096)
    _vsnprintf(buf, len(buf), fmt, args)
    log.log(_LEVELS.get(level, logging.DEBUG), "%s", buf.value.decode(errors="replace").rstrip())
    return 0


_lib.libbpf_set_print.restype = _vp
_lib.libbpf_set_print.argtypes = [_PRINT_FN]
_lib.libbpf_set_print(_print)


def check(ret: int, what: str) -> int:
    """Raise BpfError for a negative libbpf return value, else pass it through."""
    if ret < 0:
        err = -ret if ret != -1 else ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def link_create(prog_fd: int, ifindex: int, attach_type: int) -> int:
    """Attach a program to a device with a BPF link (tcx); returns the link fd."""
    return check(_bpf_link_create(prog_fd, ifindex, attach_type, None), "bpf_link_create")


def link_update(link_fd: int, prog_fd: int) -> None:
    """Atomically replace the program behind a link."""
    check(_bpf_link_update(link_fd, prog_fd, None), "bpf_link_update")


def obj_pin(fd: int, path: str) -> None:
    """Pin a BPF object (map, program, link) at a bpffs path."""
    check(_bpf_obj_pin(fd, path.encode()), f"bpf_obj_pin {path}")


def obj_get(path: str) -> int:
    """Open a pinned BPF object; returns a new fd."""
    return check(_bpf_obj_get(path.encode()), f"bpf_obj_get {path}")


def map_update(fd: int, key: ctypes._CData, value: ctypes._CData, flags: int = BPF_ANY) -> None:
    """Insert or replace one map element."""
    check(
        _bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), flags),
        "bpf_map_update_elem",
    )


def map_lookup(fd: int, key: ctypes._CData, value: ctypes._CData) -> bool:
    """Read one element into value; False when the key is absent."""
    ret = _bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
    if ret < 0 and ctypes.get_errno() == 2:
        return False
    check(ret, "bpf_map_lookup_elem")
    return True


def map_delete(fd: int, key: ctypes._CData) -> bool:
    """Delete one element; False when the key was absent."""
    ret = _bpf_map_delete_elem(fd, ctypes.byref(key))
    if ret < 0 and ctypes.get_errno() == 2:
        return False
    check(ret, "bpf_map_delete_elem")
    return True


def map_next_key(fd: int, key: ctypes._CData | None, next_key: ctypes._CData) -> bool:
    """Advance a key iteration; False at the end."""
    ret = _bpf_map_get_next_key(
        fd, ctypes.byref(key) if key is not None else None, ctypes.byref(next_key)
    )
    if ret < 0 and ctypes.get_errno() == 2:
        return False
    check(ret, "bpf_map_get_next_key")
    return True


def possible_cpus() -> int:
    """Number of possible CPUs: the value count of per-CPU maps."""
    return check(_libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


_bpf_obj_get_info_by_fd = _sig(
    "bpf_obj_get_info_by_fd", _int, _int, _vp, ctypes.POINTER(ctypes.c_uint32)
)


class _LinkInfo(ctypes.Structure):
    # struct bpf_link_info: type, id, prog_id, then a union aligned to 8 bytes
    # whose tcx member starts with ifindex, attach_type.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("rest", ctypes.c_uint8 * 64),
    ]


def link_target(link_fd: int) -> tuple[int, int]:
    """(ifindex, prog_id) of a tcx link; ifindex 0 once its device is gone."""
    info = _LinkInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(
        _bpf_obj_get_info_by_fd(link_fd, ctypes.byref(info), ctypes.byref(size)),
        "bpf_obj_get_info_by_fd",
    )
    return int(info.ifindex), int(info.prog_id)


def prog_id(prog_fd: int) -> int:
    """Kernel ID of a loaded program."""
    # struct bpf_prog_info starts with type, id.
    buf = (ctypes.c_uint32 * 64)()
    size = ctypes.c_uint32(ctypes.sizeof(buf))
    check(_bpf_obj_get_info_by_fd(prog_fd, buf, ctypes.byref(size)), "bpf_obj_get_info_by_fd")
    return int(buf[1])


# -- batch map operations (used by connection-tracking GC) ----------------------

_bpf_map_lookup_batch = _sig("bpf_map_lookup_batch", _int, _int, _vp, _vp, _vp, _vp, _vp, _vp)
_bpf_map_delete_batch = _sig("bpf_map_delete_batch", _int, _int, _vp, _vp, _vp)
_bpf_map_update_batch = _sig("bpf_map_update_batch", _int, _int, _vp, _vp, _vp, _vp)


def map_lookup_batch(
    fd: int,
    token: ctypes.Array[Any],
    first: bool,
    keys: ctypes.Array[Any],
    values: ctypes.Array[Any],
    max_count: int,
) -> tuple[int, bool]:
    """Read up to max_count elements after `token` (a key-sized buffer, updated in place).

    Returns (elements read, more to come).
    """
    count = ctypes.c_uint32(max_count)
    ret = _bpf_map_lookup_batch(
        fd, None if first else token, token, keys, values, ctypes.byref(count), None
    )
    if ret < 0 and ctypes.get_errno() == 2:
        return int(count.value), False
    check(ret, "bpf_map_lookup_batch")
    return int(count.value), True


def map_delete_batch(fd: int, keys: ctypes.Array[Any], n: int, key_size: int) -> int:
    """Delete n keys packed in `keys`; keys already gone are skipped. Returns how many went."""
    deleted = 0
    start = 0
    base = ctypes.addressof(keys)
    while start < n:
        count = ctypes.c_uint32(n - start)
        ret = _bpf_map_delete_batch(fd, base + start * key_size, ctypes.byref(count), None)
        deleted += int(count.value)
        if ret >= 0:
            break
        if ctypes.get_errno() != 2:
            check(ret, "bpf_map_delete_batch")
        start += int(count.value) + 1  # skip the key that vanished meanwhile
    return deleted


def map_update_batch(fd: int, keys: ctypes.Array[Any], values: ctypes.Array[Any], n: int) -> None:
    """Insert or replace n elements packed in keys and values."""
    count = ctypes.c_uint32(n)
    check(
        _bpf_map_update_batch(fd, keys, values, ctypes.byref(count), None),
        "bpf_map_update_batch",
    )


def _map_info(fd: int) -> ctypes.Array[ctypes.c_uint32]:
    # struct bpf_map_info starts with type, id, key_size, value_size, max_entries.
    buf = (ctypes.c_uint32 * 32)()
    size = ctypes.c_uint32(ctypes.sizeof(buf))
    check(_bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size)), "bpf_obj_get_info_by_fd")
    return buf


def map_max_entries(fd: int) -> int:
    """max_entries of a map (from struct bpf_map_info)."""
    return int(_map_info(fd)[4])


def map_entry_sizes(fd: int) -> tuple[int, int]:
    """(key size, value size) of a map."""
    info = _map_info(fd)
    return int(info[2]), int(info[3])
