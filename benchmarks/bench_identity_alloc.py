"""Cluster identity allocation through etcd against raw create-only puts (issue 8).

Three agents (three processes, each with its own node name, lease session and
`ClusterIdentityAllocator`) allocate 10,000 distinct label sets at once, a third
each. The baseline is three processes doing create-only transactions of 10,000
keys to the same etcd, with the same number of threads per process, through the same
client and transport (`cilia.kvstore.transport`). Reported beside it, not used for
the ratio: the same raw puts through etcd3gw's former `requests` session (the old
baseline, about four times the client CPU per call), and the same writes as the
allocation (its two-key transaction, a precomputed id, one watch per process): the
store work of the scheme without the allocator. The phases alternate round by round
(fresh key prefixes each time); the result is the ratio of the rates against the raw
puts (target >= 0.5), the ratio against the same writes (reported) and the
allocation's total time (target < 5 s).

Every allocation round is checked: 10,000 master keys with 10,000 distinct label
sets, one reference key per label set, and the ids each agent got match the store.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from queue import Queue
from typing import Any

import requests
from benchmarks.common import log, median, save, verdict
from requests.adapters import HTTPAdapter

from cilia.cluster.etcd import EtcdServer
from cilia.kvstore import ClusterIdentityAllocator, Etcd, NodeSession
from cilia.kvstore import client as kvclient
from cilia.kvstore.client import Compare, Put, prefix_end
from cilia.kvstore.keys import IdentityKeys, decode_labels, encode_labels
from cilia.labels import Labels
from cilia.proxy.sockets import free_port

COUNT = 10_000
AGENTS = 3
RATIO_TARGET = 0.5
TIME_TARGET = 5.0


def label_set(i: int) -> Labels:
    return Labels.parse([f"k8s:app=bench-{i}", "k8s:io.kubernetes.pod.namespace=bench"])


def share(agent: int) -> range:
    """The indices one of the agents allocates (or writes)."""
    return range(agent, COUNT, AGENTS)


def requests_session(url: str, pool_size: int) -> requests.Session:
    """The session `Etcd` gave etcd3gw before `GatewaySession` (the old baseline)."""
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=pool_size))
    return session


def raw_worker(
    url: str,
    prefix: str,
    agent: int,
    threads: int,
    ready: Queue[int],
    go: Event,
    out: Queue[Any],
    old_transport: bool = False,
) -> None:
    if old_transport:  # this process only: etcd3gw over requests, as before
        vars(kvclient)["GatewaySession"] = requests_session
    etcd = Etcd([url], timeout=30.0)
    etcd.get(prefix)  # connect before the clock starts
    timed_writes(lambda i: etcd.create(f"{prefix}{i}", b"x"), agent, threads, ready, go, out)
    etcd.close()


def timed_writes(
    write: Callable[[int], bool],
    agent: int,
    threads: int,
    ready: Queue[int],
    go: Event,
    out: Queue[Any],
) -> None:
    """Report ready, wait for the start, `write` this agent's share from `threads`
    threads and report (agent, start, end, keys written, CPU seconds)."""
    cpu = time.process_time()
    ready.put(agent)
    go.wait()
    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        created = list(pool.map(write, share(agent)))
    out.put((agent, start, time.monotonic(), sum(created), time.process_time() - cpu))


def same_writes_worker(
    url: str,
    prefix: str,
    agent: int,
    threads: int,
    ready: Queue[int],
    go: Event,
    out: Queue[Any],
) -> None:
    """The allocation's store work without the allocator: per label set the same
    transaction (master and references compared, master and leased reference put) with a
    precomputed id, and one watch of the master keys per process, events only counted."""
    etcd = Etcd([url], timeout=30.0)
    keys = IdentityKeys(prefix)
    node = f"bench-node-{agent}"
    lease = etcd.grant(60)
    seen: list[int] = []
    watch = etcd.watch_prefix(
        keys.id_prefix, 0, lambda events: seen.append(len(events)), lambda _reason: None
    )

    def write(i: int) -> bool:
        encoded = encode_labels(label_set(i))
        refs = keys.references(encoded)
        master = keys.master(i + 256)
        return etcd.txn(
            [
                Compare(master, "version", "==", 0),
                Compare(refs, "version", "==", 0, range_end=prefix_end(refs)),
            ],
            [Put(master, encoded.encode()), Put(keys.reference(encoded, node), b"x", lease)],
        ).succeeded

    timed_writes(write, agent, threads, ready, go, out)
    watch.cancel()
    etcd.revoke(lease)
    etcd.close()


def alloc_worker(
    url: str,
    prefix: str,
    agent: int,
    threads: int,
    ready: Queue[int],
    go: Event,
    done: Event,
    out: Queue[Any],
) -> None:
    etcd = Etcd([url], timeout=30.0)
    session = NodeSession(etcd, ttl=60, keepalive_interval=10.0)
    allocator = ClusterIdentityAllocator(etcd, session, f"bench-node-{agent}", prefix=prefix)
    session.start()
    allocator.start()
    assert allocator.wait_synced(30.0)
    cpu = time.process_time()
    ready.put(agent)
    go.wait()
    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        ids = list(pool.map(lambda i: allocator.allocate(label_set(i)), share(agent)))
    ids_of = dict(zip(share(agent), ids, strict=True))
    out.put((agent, start, time.monotonic(), ids_of, time.process_time() - cpu))
    done.wait(120.0)  # the parent checks the store while the references still exist
    allocator.stop()
    session.stop(revoke=True)
    etcd.close()


@dataclass
class Phase:
    seconds: float
    client_cpu: float
    etcd_cpu: float


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_phase(kind: str, server: EtcdServer, prefix: str, threads: int) -> Phase:
    """Start the three processes, release them at once, check the result."""
    url = server.url
    etcd_pid = server.pid()
    assert etcd_pid is not None
    ctx = mp.get_context("spawn")
    ready: Queue[int] = ctx.Queue()  # type: ignore[assignment]
    out: Queue[Any] = ctx.Queue()  # type: ignore[assignment]
    go, done = ctx.Event(), ctx.Event()
    procs = []
    for agent in range(AGENTS):
        if kind in ("raw", "raw-requests"):
            old = kind == "raw-requests"
            args: tuple[Any, ...] = (url, prefix, agent, threads, ready, go, out, old)
            procs.append(ctx.Process(target=raw_worker, args=args))
        elif kind == "same-writes":
            args = (url, prefix, agent, threads, ready, go, out)
            procs.append(ctx.Process(target=same_writes_worker, args=args))
        else:
            args = (url, prefix, agent, threads, ready, go, done, out)
            procs.append(ctx.Process(target=alloc_worker, args=args))
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=60)
        etcd_before = process_cpu(etcd_pid)
        go.set()
        results = [out.get(timeout=300) for _ in procs]
        total = max(r[2] for r in results) - min(r[1] for r in results)
        etcd_cpu = process_cpu(etcd_pid) - etcd_before
        if kind == "alloc":
            check_allocation(url, prefix, results)
        done.set()
    finally:
        done.set()
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    return Phase(total, sum(r[4] for r in results), etcd_cpu)


def check_allocation(url: str, prefix: str, results: list[Any]) -> None:
    """The store holds exactly one identity and one reference per label set, and the
    agents' ids are those of the store."""
    keys = IdentityKeys(prefix)
    etcd = Etcd([url], timeout=30.0)
    try:
        masters, _ = etcd.list_prefix(keys.id_prefix)
        references, _ = etcd.list_prefix(keys.value_prefix, keys_only=True)
    finally:
        etcd.close()
    by_labels = {decode_labels(kv.value.decode()): keys.parse_master(kv.key) for kv in masters}
    got = {i: ident for r in results for i, ident in r[3].items()}
    problems = []
    if len(masters) != COUNT or len(by_labels) != COUNT:
        problems.append(f"{len(masters)} master keys for {len(by_labels)} label sets")
    if len(references) != COUNT:
        problems.append(f"{len(references)} reference keys")
    wrong = [i for i, ident in got.items() if by_labels.get(label_set(i)) != ident]
    if wrong or len(got) != COUNT:
        problems.append(f"{len(wrong)} agents' ids differ from the store, {len(got)} results")
    if problems:
        raise SystemExit("allocation check failed: " + "; ".join(problems))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8, help="threads per process")
    parser.add_argument(
        "--tmpfs", action="store_true", help="etcd data in /dev/shm (no disk fsync cost)"
    )
    parser.add_argument("--quick", action="store_true", help="one round")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    tag = secrets.token_hex(3)
    root = "/dev/shm" if args.tmpfs else None
    base = Path(tempfile.mkdtemp(prefix=f"cilia-bench-etcd-{tag}-", dir=root))
    server = EtcdServer(base, free_port(), free_port(), name=f"cilia-bench-{tag}")
    samples: dict[str, list[Phase]] = {
        "raw": [],
        "alloc": [],
        "same-writes": [],
        "raw-requests": [],
    }
    try:
        server.start()
        log(f"etcd {server.url}, data in {base}, {args.threads} threads per process")
        log(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
        for rnd in range(rounds):
            order: tuple[str, ...] = ("raw", "alloc", "same-writes")
            order = (*(order if rnd % 2 == 0 else reversed(order)), "raw-requests")
            for kind in order:
                prefix = f"cilia-bench-{tag}/r{rnd}-{kind}/"
                phase = run_phase(kind, server, prefix, args.threads)
                samples[kind].append(phase)
                log(
                    f"round {rnd + 1} {kind}: {phase.seconds:.2f} s"
                    f" ({COUNT / phase.seconds:,.0f}/s), CPU s: clients"
                    f" {phase.client_cpu:.1f}, etcd {phase.etcd_cpu:.1f}"
                )
                cleaner = Etcd([server.url], timeout=30.0)
                cleaner.delete_prefix(prefix)
                cleaner.compact(cleaner.status()["revision"])  # every round on a store alike
                cleaner.close()
    finally:
        server.remove()
    alloc = median([p.seconds for p in samples["alloc"]])
    ratios = [r.seconds / a.seconds for r, a in zip(samples["raw"], samples["alloc"], strict=True)]
    ratio = median(ratios)
    ok_ratio, ok_time = ratio >= RATIO_TARGET, alloc < TIME_TARGET
    where = "tmpfs" if args.tmpfs else "disk"
    print(f"identity allocation: {COUNT:,} label sets, {AGENTS} agents x {args.threads} threads")
    print(f"etcd data on {where}; CPU seconds are medians, per phase")
    kinds = (
        ("raw", "raw create-only puts"),
        ("alloc", "identity allocation"),
        ("same-writes", "same writes + watch"),
        ("raw-requests", "raw, old requests"),
    )
    for kind, name in kinds:
        phases = samples[kind]
        secs = median([p.seconds for p in phases])
        print(
            f"  {name:21s}: median {secs:.2f} s ({COUNT / secs:,.0f}/s), CPU clients "
            f"{median([p.client_cpu for p in phases]):.1f} s, etcd "
            f"{median([p.etcd_cpu for p in phases]):.1f} s"
        )
    rounds_text = ", ".join(f"{r:.2f}" for r in ratios)
    same = [
        s.seconds / a.seconds for s, a in zip(samples["same-writes"], samples["alloc"], strict=True)
    ]
    same_text = ", ".join(f"{r:.2f}" for r in same)
    old = median([p.seconds for p in samples["raw-requests"]])
    print(f"  ratio vs old baseline: {old / alloc:.2f} (raw puts over requests, for reference)")
    print(f"  rate ratio alloc/raw : {ratio:.2f} (rounds {rounds_text})", end="")
    print(f"  target >= {RATIO_TARGET}: {verdict(ok_ratio)}")
    print(
        f"  rate ratio alloc/same writes: {median(same):.2f} (rounds {same_text}),"
        " the allocator's own cost, reported"
    )
    print(
        f"  allocation total     : {alloc:.2f} s  target < {TIME_TARGET:.0f} s: {verdict(ok_time)}"
    )
    save(
        "identity_alloc",
        {
            "threads": args.threads,
            "tmpfs": args.tmpfs,
            "samples": {k: [asdict(p) for p in v] for k, v in samples.items()},
            "ratios": ratios,
            "same_writes_ratios": same,
        },
    )
    return 0 if ok_ratio and ok_time else 3


if __name__ == "__main__":
    sys.exit(main())
