"""bpf/lib/common.h and its Python twins agree: struct members, constants, drop names."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from cilia.datapath import layout
from cilia.datapath.drop_reasons import REASONS

COMMON_H = Path(__file__).resolve().parents[2] / "bpf" / "lib" / "common.h"
C_TYPES = {
    "__u8": ctypes.c_uint8,
    "__u16": ctypes.c_uint16,
    "__u32": ctypes.c_uint32,
    "__u64": ctypes.c_uint64,
    "union v6addr": layout.Addr,
}
ARRAY_SIZES = {"ETH_ALEN": 6}
"""Array sizes the header takes from kernel headers."""
TWINS = {
    "endpoint_info": layout.EndpointInfo,
    "lxc_ip_info": layout.LxcIpInfo,
    "ipcache_key": layout.IpcacheKey,
    "ipcache_value": layout.IpcacheValue,
    "policy_key": layout.PolicyKey,
    "policy_value": layout.PolicyValue,
    "ct_key": layout.CtKey,
    "ct_entry": layout.CtEntry,
    "datapath_config": layout.DatapathConfig,
    "metrics_key": layout.MetricsKey,
    "metrics_value": layout.MetricsValue,
    "event": layout.Event,
    "lb_key": layout.LbKey,
    "lb_service": layout.LbService,
    "lb_slot_key": layout.LbSlotKey,
    "lb_backend": layout.LbAddress,
    "lb_frontend": layout.LbAddress,
}


def _header() -> str:
    text = COMMON_H.read_text()
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def _structs() -> dict[str, list[tuple[str, type]]]:
    out = {}
    for name, body in re.findall(r"struct (\w+) \{(.*?)\};", _header(), flags=re.S):
        members = re.findall(r"(__u\d+|union v6addr) (\w+)(?:\[(\w+)\])?;", body)
        out[name] = [
            (member, C_TYPES[ctype] * ARRAY_SIZES[size] if size else C_TYPES[ctype])
            for ctype, member, size in members
        ]
    return out


def _defines() -> dict[str, int]:
    """Numeric #defines: `N`, `0xN` or `(N << S)`."""
    pattern = r"#define (\w+) \(?((?:0x)?[0-9a-f]+)(?: << (\d+)\))?\s*$"
    return {
        name: int(value, 0) << int(shift or 0)
        for name, value, shift in re.findall(pattern, _header(), flags=re.M)
    }


@pytest.mark.parametrize("c_name", sorted(TWINS))
def test_struct_twins_have_the_same_members(c_name: str) -> None:
    twin = TWINS[c_name]
    assert [(n, t) for n, t, *_ in twin._fields_] == _structs()[c_name]


def test_every_struct_has_a_twin() -> None:
    assert set(_structs()) - set(TWINS) == {"flow"}  # flow never leaves the datapath


def test_shared_constants_are_equal() -> None:
    defines = _defines()
    shared = [n for n in dir(layout) if n.isupper() and n in defines]
    assert {"MARK_MAGIC_OVERLAY", "MARK_MAGIC_FROM_PROXY", "IPCACHE_F_CIDR"} <= set(shared)
    assert {n: getattr(layout, n) for n in shared} == {n: defines[n] for n in shared}


def test_marks_do_not_collide() -> None:
    marks = [layout.MARK_MAGIC_TO_PROXY, layout.MARK_MAGIC_FROM_PROXY, layout.MARK_MAGIC_OVERLAY]
    assert len({m & layout.MARK_MAGIC_MASK for m in marks}) == len(marks)
    assert all(m == m & layout.MARK_MAGIC_MASK for m in marks), "identities live in bits 16-31"


def test_every_drop_reason_has_a_name() -> None:
    drops = {v for n, v in _defines().items() if n.startswith("DROP_")}
    assert {141, 147, 160} <= drops
    assert drops - set(REASONS) == set()
