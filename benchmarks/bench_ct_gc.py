"""CT garbage collection: a GC scan of a 500,000-entry table (half of it expired,
deleted in batches) against iterating the same table key by key without deleting.

The table is the pinned `cilia_ct` map of a real agent sized 524,288 entries
(CILIA_CT_MAX_ENTRIES), filled with `bpf_map_update_batch`.
"""

from __future__ import annotations

import argparse

from benchmarks.common import agent, log, median, save, timed

from cilia.datapath import conntrack, libbpf
from cilia.datapath.layout import CtEntry, CtKey
from cilia.datapath.manager import boottime
from cilia.datapath.maps import CtMap, addr

ENTRIES = 500_000
CT_SIZE = 524_288


def fill(ct: CtMap, n: int, now: int, start: int = 0, step: int = 1) -> None:
    """Entries start, start+step, ... below n; even ones expired, odd ones alive."""
    idx = list(range(start, n, step))
    for part in range(0, len(idx), 65536):
        chunk = idx[part : part + 65536]
        keys = (CtKey * len(chunk))()
        values = (CtEntry * len(chunk))()
        for j, i in enumerate(chunk):
            src = addr(f"10.{(i >> 16) & 0xFF}.{(i >> 8) & 0xFF}.{i & 0xFF}")
            keys[j] = CtKey(saddr=src, daddr=addr("10.0.0.1"), sport=i & 0xFFFF, dport=80, proto=17)
            values[j] = CtEntry(expires=now - 5 if i % 2 == 0 else now + 3600, packets=1)
        libbpf.map_update_batch(ct.fd, keys, values, len(chunk))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 repetition instead of 3")
    args = ap.parse_args()
    reps = 1 if args.quick else 3
    with agent({"CILIA_CT_MAX_ENTRIES": str(CT_SIZE), "CILIA_CT_GC_INTERVAL": "3600"}) as c:
        ct = CtMap(str(c.config.bpf_dir / "maps" / "cilia_ct"))
        try:
            now = boottime()
            log(f"filling the CT table with {ENTRIES} entries")
            fill(ct, ENTRIES, now)
            iterate, scan_only, gc = [], [], []
            for rep in range(reps):
                t, n = timed(lambda: conntrack.iterate_only(ct))
                assert n == ENTRIES, n
                iterate.append(t)
                t, res = timed(lambda: conntrack.gc_scan(ct, 0))  # nothing expires
                assert res.entries == ENTRIES and res.deleted == 0
                scan_only.append(t)
                t, res = timed(lambda: conntrack.gc_scan(ct, boottime()))
                assert res.entries == ENTRIES and res.deleted == ENTRIES // 2, res
                gc.append(t)
                log(
                    f"rep {rep}: iterate {iterate[-1]:.2f}s, batch scan {scan_only[-1]:.2f}s, "
                    f"GC {gc[-1]:.2f}s"
                )
                fill(ct, ENTRIES, now, 0, 2)  # put the expired half back
        finally:
            ct.close()
    result = {
        "entries": ENTRIES,
        "iterate_seconds": median(iterate),
        "batch_scan_seconds": median(scan_only),
        "gc_seconds": median(gc),
        "gc_vs_iterate": median(gc) / median(iterate),
    }
    save("ct_gc", {**result, "samples": {"iterate": iterate, "scan": scan_only, "gc": gc}})
    print(
        f"CT GC, {ENTRIES} entries (half expired): GC scan+delete {result['gc_seconds']:.2f}s, "
        f"batch scan alone {result['batch_scan_seconds']:.2f}s, key-by-key iteration without "
        f"deleting {result['iterate_seconds']:.2f}s -> GC/iterate = {result['gc_vs_iterate']:.2f}"
    )


if __name__ == "__main__":
    main()
