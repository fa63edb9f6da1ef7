"""Pure parts of the etcd client: range ends and transaction encoding."""

from __future__ import annotations

import base64

import pytest

from cilia.kvstore.client import (
    Backoff,
    Compare,
    Count,
    Delete,
    Get,
    Put,
    _compare_json,
    _op_json,
    prefix_end,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogateescape")).decode()


def test_prefix_end() -> None:
    assert prefix_end("a/") == "a0"
    assert prefix_end("abc") == "abd"
    assert prefix_end("") == "\0"
    end = prefix_end("k\xff").encode("utf-8", "surrogateescape")  # 'ÿ' is c3 bf in UTF-8
    assert end == b"k\xc3\xc0"


def test_compare_json() -> None:
    assert _compare_json(Compare("k", "version", "==", 0, range_end="l")) == {
        "key": b64("k"),
        "target": "VERSION",
        "result": "EQUAL",
        "version": "0",
        "range_end": b64("l"),
    }
    assert _compare_json(Compare("k", "mod", "<", 7))["mod_revision"] == "7"
    assert _compare_json(Compare("k", "create", ">", 1))["create_revision"] == "1"
    assert _compare_json(Compare("k", "value", "!=", b"v"))["value"] == b64("v")
    with pytest.raises(TypeError):
        _compare_json(Compare("k", "value", "==", 1))
    with pytest.raises(TypeError):
        _compare_json(Compare("k", "version", "==", b"1"))


def test_op_json() -> None:
    assert _op_json(Put("k", b"v", lease=9)) == {
        "request_put": {"key": b64("k"), "value": b64("v"), "lease": "9"}
    }
    assert _op_json(Put("k", b"v")) == {"request_put": {"key": b64("k"), "value": b64("v")}}
    assert _op_json(Delete("p/", prefix=True)) == {
        "request_delete_range": {"key": b64("p/"), "range_end": b64("p0")}
    }
    assert _op_json(Get("k")) == {"request_range": {"key": b64("k")}}
    assert _op_json(Get("p/", prefix=True, keys_only=True, min_mod_revision=5)) == {
        "request_range": {
            "key": b64("p/"),
            "range_end": b64("p0"),
            "keys_only": True,
            "min_mod_revision": "5",
        }
    }
    assert _op_json(Count("p/", prefix=True))["request_range"]["count_only"] is True


def test_backoff_is_bounded() -> None:
    backoff = Backoff(0.1, 1.0)
    delays = [backoff.next() for _ in range(10)]
    assert 0.08 <= delays[0] <= 0.12
    assert all(d <= 1.2 for d in delays) and delays[-1] >= 0.8
    backoff.reset()
    assert backoff.next() <= 0.12
