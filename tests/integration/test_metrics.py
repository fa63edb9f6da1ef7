"""Metrics scraped by a real Prometheus server and checked with PromQL.

The test starts Debian's `prometheus` on loopback with a random free port and
a private storage directory, and stops it by PID at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import Cilia, running_agent
from tests.integration.observe_helpers import DS, PODS, RULE1, TF, XW, send_udp, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cilia(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cilia]:
    with running_agent(
        tmp_path_factory.mktemp("metrics"), CILIA_PROMETHEUS_SERVE_ADDR=f"127.0.0.1:{free_port()}"
    ) as agent:
        agent.apply(PODS)
        yield agent


@pytest.fixture(scope="module")
def prometheus(cilia: Cilia, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    tmp = tmp_path_factory.mktemp("prometheus")
    target = cilia.env["CILIA_PROMETHEUS_SERVE_ADDR"]
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: cilia\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    listen = f"127.0.0.1:{free_port()}"
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address={listen}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://{listen}"
    try:
        wait_until(lambda: _ready(url), "prometheus to be ready", 60)
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def promql(url: str, query: str) -> float | None:
    """Value of an instant query with one series (None when there is none)."""
    res = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10).json()
    assert res["status"] == "success", res
    result = res["data"]["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def scraped_after(url: str, since: float) -> bool:
    """Has Prometheus scraped the agent successfully after `since` (unix time)?"""
    res = httpx.get(f"{url}/api/v1/targets", timeout=10).json()
    targets = res["data"]["activeTargets"]
    if not targets or targets[0]["health"] != "up":
        return False
    last = datetime.fromisoformat(targets[0]["lastScrape"].replace("Z", "+00:00"))
    return last.timestamp() > since


def test_prometheus_counts_equal_the_probes_sent(cilia: Cilia, prometheus: str) -> None:
    c, url = cilia, prometheus
    ds = c.client.get(f"/endpoint/{DS}")
    c.apply(RULE1)
    l3 = 'cilia_drop_count_total{reason="Policy denied (L3)",direction="INGRESS"}'
    l4 = 'cilia_drop_count_total{reason="Policy denied (L4)",direction="INGRESS"}'
    fwd_in = 'cilia_forward_count_total{direction="INGRESS"}'
    fwd_out = 'cilia_forward_count_total{direction="EGRESS"}'
    try:
        # One denied packet of each kind creates the series; then the baseline.
        send_udp(c, XW, ds["ipv4"], 80)
        send_udp(c, TF, ds["ipv4"], 81)
        now = time.time()
        wait_until(lambda: scraped_after(url, now), "a scrape")
        wait_until(lambda: promql(url, l4) is not None, "the L4 series")
        base = {q: promql(url, q) or 0.0 for q in (l3, l4, fwd_in, fwd_out)}

        send_udp(c, XW, ds["ipv4"], 80, flows=7)  # 7 denied (L3)
        send_udp(c, TF, ds["ipv4"], 81, flows=5)  # 5 denied (L4)
        for _ in range(4):  # 4 allowed datagrams, each echoed back
            assert c.probe(TF, DS, 80, "UDP")
        expected = {l3: 7.0, l4: 5.0}
        # A denied packet is forwarded at its source's egress and dropped at the
        # destination's ingress: 12 egress forwards. An allowed datagram and its
        # echo each cross two devices: 2 ingress and 2 egress forwards per probe.
        expected.update({fwd_in: 8.0, fwd_out: 12.0 + 8.0})
        now = time.time()
        wait_until(lambda: scraped_after(url, now + 1), "a scrape after the probes")
        got = {q: (promql(url, q) or 0.0) - base[q] for q in expected}
        assert got == expected

        assert promql(url, f"sum(cilia_drop_count_total) >= {base[l3] + base[l4] + 12}")
        assert promql(url, "cilia_endpoint_count") == 3
        assert promql(url, "cilia_policy_count") == 1
        assert promql(url, "cilia_controllers_failing") == 0
        assert (promql(url, 'cilia_endpoint_regenerations{outcome="success"}') or 0) >= 3
        for name in (
            "cilia_policy_l7_forwarded_total",
            "cilia_policy_l7_denied_total",
            "cilia_policy_l7_received_total",
            "cilia_policy_l7_parse_errors_total",
            "cilia_datapath_errors_total",
            "cilia_identity_count",
            "cilia_policy_max_revision",
            "cilia_endpoint_regenerating",
            "cilia_policy_import_errors",
        ):
            assert promql(url, name) is not None, name
        assert promql(url, 'cilia_event_ts{source="agent"}')
    finally:
        c.delete(RULE1)


def test_metrics_list_and_import_errors(cilia: Cilia, tmp_path: Path) -> None:
    c = cilia
    bad = tmp_path / "bad.json"
    bad.write_text('[{"endpointSelector": {}, "ingress": [{"fromEntities": ["nowhere"]}]}]')
    assert c.run("policy", "import", str(bad), check=False).code == 1
    rows = c.run("metrics", "list", "-o", "json").json()
    errors = next(r for r in rows if r["name"] == "cilia_policy_import_errors")
    assert errors["value"] == 1
    table = c.run("metrics", "list").stdout
    assert "cilia_forward_count_total" in table and "direction=EGRESS" in table
    assert "Forwarded" in c.run("bpf", "metrics", "list").stdout
