"""The monitor hub: filters, bounded per-subscriber queues, loss reporting, decoding."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from cilia.agent import monitor as monitor_module
from cilia.agent.monitor import Filter, Monitor
from cilia.cli.observe import format_event
from cilia.datapath.events import EVENT_SIZE, BootClock, decode


def test_filter_types_endpoint_and_identities() -> None:
    ev = {"type": "drop", "endpoint": 3, "src-identity": 258, "dst-identity": 256}
    assert Filter().matches(ev)
    assert not Filter(frozenset({"trace"})).matches(ev)
    assert Filter(related_to=3).matches(ev) and not Filter(related_to=4).matches(ev)
    assert Filter(from_identity=258, to_identity=256).matches(ev)
    assert not Filter(to_identity=258).matches(ev)


def test_full_queue_counts_losses_and_reports_them() -> None:
    async def run() -> list[dict[str, object]]:
        mon = Monitor(queue_size=3)
        sub = mon.subscribe(Filter(frozenset({"agent"})), asyncio.get_running_loop())
        for i in range(5):
            mon.agent_event("test", f"event {i}")
        mon.publish({"type": "drop", "endpoint": 1})  # filtered out: not lost
        batch = await sub.next_batch(1.0)
        assert mon.status()["queue-lost"] == 2
        mon.unsubscribe(sub)
        assert mon.status()["queue-lost"] == 2 and mon.status()["subscribers"] == 0
        return batch

    batch = asyncio.run(run())
    assert [e.get("message") for e in batch[:3]] == ["event 0", "event 1", "event 2"]
    assert batch[3]["type"] == "lost" and batch[3]["count"] == 2


def test_waiting_subscriber_is_woken_from_another_thread() -> None:
    async def run() -> list[dict[str, object]]:
        mon = Monitor()
        sub = mon.subscribe(Filter(), asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: loop.run_in_executor(None, mon.agent_event, "x", "woken"))
        return await sub.next_batch(10.0)

    batch = asyncio.run(run())
    assert batch and batch[0]["message"] == "woken"


def _event(l3: int, saddr: bytes, daddr: bytes, proto: int = 6) -> bytes:
    return struct.pack(
        "=QBBBBHBBII16s16sHHIII",
        5_000_000_000,
        1,
        133,
        0,
        proto,
        7,
        0x02,
        l3,
        258,
        256,
        saddr,
        daddr,
        socket.htons(40000),
        socket.htons(80),
        74,
        12,
        0,
    )


def _mapped(ip: str) -> bytes:
    return bytes(10) + b"\xff\xff" + socket.inet_aton(ip)


def test_decode_drop_event() -> None:
    raw = _event(4, _mapped("10.0.0.2"), _mapped("10.0.0.3"))
    assert len(raw) == EVENT_SIZE
    ev = decode(raw, BootClock())
    assert ev["type"] == "drop" and ev["reason-name"] == "Policy denied (L3)"
    assert (ev["src-ip"], ev["src-port"], ev["dst-ip"], ev["dst-port"]) == (
        "10.0.0.2",
        40000,
        "10.0.0.3",
        80,
    )
    assert ev["tcp-flags"] == "SYN" and ev["direction"] == "ingress"
    assert ev["family"] == "IPv4"
    line = format_event(ev)
    assert line.startswith("xx drop (Policy denied (L3)) ingress endpoint 7")
    assert "identity 258->256" in line and "10.0.0.2:40000 -> 10.0.0.3:80 [SYN]" in line


def test_decode_ipv6_event() -> None:
    src, dst = "fd00:c1a::2", "fd00:c1a::3"
    raw = _event(6, socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst))
    ev = decode(raw, BootClock())
    assert (ev["src-ip"], ev["dst-ip"], ev["family"]) == (src, dst, "IPv6")
    assert "[fd00:c1a::2]:40000 -> [fd00:c1a::3]:80 [SYN]" in ev["summary"]
    unparsed = decode(_event(6, bytes(16), bytes(16)), BootClock())
    assert "src-ip" not in unparsed and unparsed["l3"] == "IPv6"
    echo = decode(_event(6, bytes(15) + b"\x01", bytes(15) + b"\x02", proto=58), BootClock())
    assert echo["protocol"] == "ICMPv6" and "src-port" not in echo


class _Lost:
    def __init__(self, _pin: str) -> None:
        pass

    def read(self) -> tuple[int, int]:
        return (0, 0)

    def close(self) -> None:
        pass


class _Ring(_Lost):
    """A ring buffer whose first reader fails at once; later ones just wait."""

    opened = 0

    def __init__(self, pin: str) -> None:
        _Ring.opened += 1
        self.broken = _Ring.opened == 1

    def wait(self, timeout: float) -> None:
        if self.broken:
            raise OSError("ring buffer gone")
        time.sleep(timeout)

    def drain(self) -> list[bytes]:
        return []


def test_reader_that_dies_is_restarted_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor_module, "RingBuffer", _Ring)
    monkeypatch.setattr(monitor_module, "LostCounter", _Lost)
    mon = Monitor()
    mon.start_reader("events", "lost")
    try:
        deadline = time.monotonic() + 5
        while mon._thread is not None and mon._thread.is_alive():
            assert time.monotonic() < deadline, "the broken reader should have stopped"
            time.sleep(0.01)
        with pytest.raises(RuntimeError, match="restarted"):
            mon.supervise_reader()
        assert mon.reader_restarts == 1 and _Ring.opened == 2
        assert mon.supervise_reader().startswith("reading")
    finally:
        mon.stop()
