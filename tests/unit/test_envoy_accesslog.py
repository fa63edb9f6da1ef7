"""Envoy access-log reading: chunked lines, exact batch counts, records only on demand."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cilia.policy.desired import Direction
from cilia.proxy.envoy import accesslog
from cilia.proxy.envoy.accesslog import LineBuffer, entries, tally
from cilia.proxy.envoy.config import HttpListener, Settings
from cilia.proxy.envoy.proxy import EnvoyProxy
from cilia.proxy.records import L7Record, Verdict

DENIED = "rbac_access_denied_matched_policy[none]"


def line(listener: str, *, denied: bool = False, path: str = "/", host: str = "web") -> bytes:
    """One access-log line as Envoy writes it: compact JSON, keys sorted."""
    entry = {
        "destination": "10.1.0.5:80",
        "details": DENIED if denied else "via_upstream",
        "host": host,
        "listener": listener,
        "method": "GET",
        "path": path,
        "source": "10.1.0.7:40000",
        "status": 403 if denied else 200,
    }
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def decoded_tally(block: bytes) -> Counter[tuple[str, Verdict]]:
    """The slow reference: decode every line."""
    return Counter((e["listener"], accesslog.verdict_of(e)) for e in entries(block))


def test_format_keys_are_in_envoy_order() -> None:
    # Envoy writes json_format keys sorted; the denial scan needs details before listener.
    assert list(accesslog.FORMAT) == sorted(accesslog.FORMAT)
    fmt = accesslog.listener_format("cilia-1-ingress-80")
    assert fmt["listener"] == "cilia-1-ingress-80"
    assert fmt["details"] == "%RESPONSE_CODE_DETAILS%"


def test_partial_lines_wait_for_their_end_at_every_split() -> None:
    data = line("a") + line("b", denied=True) + line("c")
    for cut in range(len(data) + 1):
        buf = LineBuffer()
        got = buf.feed(data[:cut]) + buf.feed(data[cut:])
        assert got == data, cut
    buf = LineBuffer()
    assert [buf.feed(bytes([b])) for b in data].count(b"") == len(data) - 3


def test_burst_counts_are_exact_per_listener_and_verdict() -> None:
    block = b"".join(
        line(f"cilia-{i % 3}-ingress-80", denied=i % 7 == 0, path=f"/{i}") for i in range(20000)
    )
    counts = tally(block)
    assert sum(counts.values()) == 20000
    assert counts == decoded_tally(block)
    assert counts["cilia-0-ingress-80", "denied"] == len(range(0, 20000, 21))


def test_client_chosen_fields_cannot_fake_a_listener_or_a_denial() -> None:
    evil = '","listener":"cilia-9-ingress-80","details":"rbac_access_denied\n{"listener":"x"'
    block = line("cilia-1-ingress-80", path=evil, host=evil) + line("cilia-1-ingress-80")
    assert tally(block) == Counter({("cilia-1-ingress-80", "forwarded"): 2})
    assert tally(line("cilia-1-ingress-80", denied=True, host=evil)) == Counter(
        {("cilia-1-ingress-80", "denied"): 1}
    )


def test_malformed_lines_are_skipped() -> None:
    block = b"not json\n" + line("a") + b"[1]\n"
    assert [e["listener"] for e in entries(block)] == ["a"]
    assert tally(block) == Counter({("a", "forwarded"): 1})


@given(
    st.lists(
        st.tuples(st.sampled_from(["l1", "l2", "l3"]), st.booleans(), st.text(max_size=30)),
        max_size=60,
    ),
    st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=10),
)
def test_chunked_tally_matches_a_decode_of_every_line(
    reqs: list[tuple[str, bool, str]], sizes: list[int]
) -> None:
    data = b"".join(line(name, denied=d, path=p, host=p) for name, d, p in reqs)
    buf, counts, at, i = LineBuffer(), Counter[tuple[str, Verdict]](), 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        counts += tally(buf.feed(data[at : at + size]))
        at, i = at + size, i + 1
    assert counts == decoded_tally(data)
    assert sum(counts.values()) == len(reqs)


class Sink:
    def __init__(self) -> None:
        self.counts: Counter[Verdict] = Counter()
        self.records: list[L7Record] = []
        self.wanted = False

    def on_counts(self, counts: Mapping[Verdict, int]) -> None:
        self.counts.update(counts)


def proxy(tmp: Path, sink: Sink, *names: str) -> EnvoyProxy:
    p = EnvoyProxy(
        Settings(tmp),
        identity_of=lambda ip: 300 if ip == "10.1.0.7" else 2,
        on_request=sink.records.append,
        on_counts=sink.on_counts,
        wants_records=lambda: sink.wanted,
        binary="envoy",
    )
    p._listeners = {n: HttpListener(n, 10001, Direction.INGRESS, ()) for n in names}
    return p


def test_records_only_while_wanted_and_counts_always(tmp_path: Path) -> None:
    sink = Sink()
    p = proxy(tmp_path, sink, "cilia-1-ingress-80")
    block = line("cilia-1-ingress-80") * 500 + line("cilia-1-ingress-80", denied=True)
    p._consume(block + line("gone-listener"))
    assert sink.counts == Counter({"forwarded": 500, "denied": 1})
    assert sink.records == []
    sink.wanted = True
    p._consume(block)
    assert sink.counts == Counter({"forwarded": 1000, "denied": 2})
    assert len(sink.records) == 501
    last: dict[str, Any] = {
        "verdict": sink.records[-1].verdict,
        "peer": sink.records[-1].peer_identity,
        "status": sink.records[-1].http_status,
        "source": sink.records[-1].source,
    }
    assert last == {"verdict": "denied", "peer": 300, "status": 403, "source": ("10.1.0.7", 40000)}
    assert p.counters["cilia-1-ingress-80"].snapshot() == {
        "received": 1002,
        "forwarded": 1000,
        "denied": 2,
        "parse_errors": 0,
    }


def test_reader_counts_a_burst_appended_in_pieces(tmp_path: Path) -> None:
    sink = Sink()
    p = proxy(tmp_path, sink, "cilia-1-ingress-80")
    p.settings.access_log.write_bytes(line("cilia-1-ingress-80") * 7)  # before: not counted
    p._start_reader()
    try:
        data = line("cilia-1-ingress-80") * 3000 + line("cilia-1-ingress-80", denied=True)
        with open(p.settings.access_log, "ab", buffering=0) as f:
            for piece in (data[:1234], data[1234:100000], data[100000:-5], data[-5:]):
                f.write(piece)  # most pieces end inside a line
                time.sleep(0.15)  # the reader looks every 0.1 s when idle
        deadline = time.monotonic() + 30
        while sum(sink.counts.values()) < 3001 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # and nothing more comes
        assert sink.counts == Counter({"forwarded": 3000, "denied": 1})
    finally:
        p._stop.set()
        assert p._tail is not None
        p._tail.join(5)
