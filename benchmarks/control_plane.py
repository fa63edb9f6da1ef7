"""Control plane: pod creation to ready, and policy change to enforced, with same-run baselines.

Pods (50, one `cilia apply` each): wall time of the command, and the agent's
own creation-to-ready time from the endpoint log (first state change to
`ready`, i.e. plumbing, programs attached and policy enforced). Baselines
measured in the same loop: a trivial CLI round trip (`cilia status`), bare pod
plumbing (`ensure_pod_network` on a scratch namespace) and GET /v1/healthz.
Then 50 more pods through the API (POST /v1/objects/apply, what `cilia apply`
sends), to reach 100.

Policy (100 pods, ~20 changes each way): a rule selecting all 100 pods is
imported and deleted again, through `cilia policy import` (wall time) and
through the API (PUT/DELETE /v1/policy, which return once the kernel enforces
the new revision). Baselines: GET /v1/healthz and `cilia status`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import Cilia, agent, log, median, p95, save, timed, verdict

from cilia.datapath.pod_network import ensure_pod_network, remove_pod_network

NS = "cp"
GROUPS = 10
RULE_LABEL = "unspec:bench=cp"
RULES = [
    {
        "endpointSelector": {"matchLabels": {"app": "cp"}},
        "ingress": [
            {
                "fromEndpoints": [
                    {"matchExpressions": [{"key": "group", "operator": "In", "values": g}]}
                ],
                "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}],
            }
            for g in (["g0", "g1", "g2"], ["g3", "g4"])
        ],
        "labels": [RULE_LABEL],
    }
]


def pod_yaml(i: int) -> str:
    return (
        f"apiVersion: v1\nkind: Pod\n"
        f"metadata: {{name: p{i:03d}, namespace: {NS}, "
        f"labels: {{app: cp, group: g{i % GROUPS}}}}}\n"
        f"spec:\n  containers:\n  - name: idle\n"
    )


class Samples(dict[str, list[float]]):
    """name -> seconds."""

    def add(self, name: str, seconds: float) -> None:
        self.setdefault(name, []).append(seconds)


class Plumbing:
    """Bare pod plumbing under the run's prefix (the pod-creation baseline)."""

    def __init__(self, cilia: Cilia) -> None:
        self.netns = f"{cilia.config.name_prefix}-bare"
        self.ifname = f"bare{cilia.tag}"
        self.ipv4 = cilia.config.pod_cidr.rsplit(".", 1)[0] + ".250"  # never allocated here

    def once(self) -> float:
        try:
            seconds, _ = timed(lambda: ensure_pod_network(self.netns, self.ifname, self.ipv4))
        finally:
            remove_pod_network(self.netns, self.ifname, self.ipv4)
        return seconds

    def leftover(self) -> bool:
        return (
            Path(f"/sys/class/net/{self.ifname}").exists()
            or Path(f"/run/netns/{self.netns}").exists()
        )


def rotated(steps: list[Callable[[], None]], k: int) -> None:
    for step in steps[k % len(steps) :] + steps[: k % len(steps)]:
        step()


def agent_ready_seconds(cilia: Cilia, key: str) -> float:
    """First state change of the endpoint to its first `ready`, from its log."""
    entries = cilia.client.request("GET", f"/endpoint/{key}/log")
    ready = next(e["time"] for e in entries if e["state"] == "ready")
    return float(ready - entries[0]["time"])


def pods_benchmark(cilia: Cilia, n_cli: int, n_api: int, s: Samples) -> None:
    plumbing = Plumbing(cilia)
    c = cilia.client

    def healthz() -> None:
        s.add("healthz", timed(lambda: c.request("GET", "/healthz"))[0])

    def cli_status() -> None:
        s.add("cli status", timed(lambda: cilia.run("status", "-o", "json"))[0])

    def bare() -> None:
        s.add("bare plumbing", plumbing.once())

    for i in range(n_cli + n_api):
        key = f"{NS}/p{i:03d}"
        via_cli = i < n_cli

        def create(i: int = i, key: str = key, via_cli: bool = via_cli) -> None:
            if via_cli:
                s.add("pod: cilia apply", timed(lambda: cilia.apply(pod_yaml(i)))[0])
                s.add("pod: agent creation to ready", agent_ready_seconds(cilia, key))
            else:
                body = {"text": pod_yaml(i), "source": "bench"}
                req = lambda: c.request("POST", "/objects/apply", json=body)  # noqa: E731
                s.add("pod: API apply", timed(req)[0])
            ep = c.request("GET", f"/endpoint/{key}")
            assert ep["state"] == "ready", ep

        rotated([healthz, cli_status, bare, create], i)
        if (i + 1) % 25 == 0:
            log(f"{i + 1} pods created")
    if plumbing.leftover():
        raise AssertionError("bare plumbing left a device or namespace behind")


def policy_benchmark(cilia: Cilia, n: int, pods: int, rules_file: Path, s: Samples) -> None:
    c = cilia.client

    def enforced(revision: int, rule_present: bool) -> None:
        """Every endpoint is at the revision, with entries exactly when the rule is in."""
        eps = c.request("GET", "/endpoint")
        assert len(eps) == pods and all(e["policy-revision"] >= revision for e in eps), revision
        assert c.request("GET", "/status")["realized-revision"] >= revision
        counts = {e["policy-entries"] for e in eps}
        assert len(counts) == 1 and (counts.pop() > 0) == rule_present, counts

    def cli_import() -> None:
        secs, res = timed(lambda: cilia.run("policy", "import", str(rules_file)))
        s.add("policy import: cilia policy import", secs)
        enforced(int(res.stdout.split()[-1]), True)

    def api(method: str, name: str, body: object, present: bool) -> Callable[[], None]:
        def step() -> None:
            secs, res = timed(lambda: c.request(method, "/policy", json=body))
            s.add(name, secs)
            enforced(int(res["revision"]), present)

        return step

    api_import = api("PUT", "policy import: API", {"rules": RULES}, True)
    api_delete = api("DELETE", "policy delete: API", {"labels": [RULE_LABEL]}, False)

    def healthz() -> None:
        s.add("healthz", timed(lambda: c.request("GET", "/healthz"))[0])

    def cli_status() -> None:
        s.add("cli status", timed(lambda: cilia.run("status", "-o", "json"))[0])

    for k in range(n):
        # Baselines sit between the changes; each import is followed by its delete.
        for step in (healthz, cli_import, api_delete, cli_status, api_import, api_delete):
            step()
        if (k + 1) % 10 == 0:
            log(f"{k + 1} import/delete cycles")


def line(name: str, xs: list[float], base: list[float] | None = None, label: str = "") -> str:
    out = (
        f"  {name:<38} median {median(xs) * 1e3:7.1f} ms  p95 {p95(xs) * 1e3:7.1f} ms  n={len(xs)}"
    )
    if base:
        out += f"  ({median(xs) / median(base):.1f}x {label})"
    return out


def report(pod: Samples, pol: Samples, pods: int) -> bool:
    print(f"\n== Control plane: pod creation ({len(pod['pod: cilia apply'])} pods) ==")
    print(line("baseline GET /v1/healthz", pod["healthz"]))
    print(line("baseline `cilia status` (CLI trip)", pod["cli status"]))
    print(line("baseline bare pod plumbing", pod["bare plumbing"]))
    print(line("pod: cilia apply (wall)", pod["pod: cilia apply"], pod["cli status"], "status"))
    agent_side = pod["pod: agent creation to ready"]
    print(line("pod: agent creation to ready", agent_side, pod["bare plumbing"], "plumbing"))
    api = pod["pod: API apply"]
    first = len(pod["pod: cilia apply"])
    name = f"pod: API apply (pods {first + 1}-{first + len(api)})"
    print(line(name, api, pod["bare plumbing"], "plumbing"))
    ok_pod = median(agent_side) < 0.150
    print(
        f"  [4b] agent pod creation to ready, median {median(agent_side) * 1e3:.0f} ms "
        f"(target < 150 ms): {verdict(ok_pod)}"
    )
    print(f"\n== Control plane: policy change to enforced ({pods} pods) ==")
    print(line("baseline GET /v1/healthz", pol["healthz"]))
    print(line("baseline `cilia status` (CLI trip)", pol["cli status"]))
    cli = pol["policy import: cilia policy import"]
    print(line("import: cilia policy import (wall)", cli, pol["cli status"], "status"))
    changes = pol["policy import: API"] + pol["policy delete: API"]
    print(
        line("import: API (PUT /v1/policy)", pol["policy import: API"], pol["healthz"], "healthz")
    )
    print(
        line(
            "delete: API (DELETE /v1/policy)", pol["policy delete: API"], pol["healthz"], "healthz"
        )
    )
    print(line("any change: API", changes, pol["healthz"], "healthz"))
    ok_pol = p95(changes) < 0.100
    print(
        f"  [4a] policy change to enforced for {pods} pods: median {median(changes) * 1e3:.0f} ms,"
        f" p95 {p95(changes) * 1e3:.0f} ms (target < 100 ms): {verdict(ok_pol)}"
    )
    return ok_pod and ok_pol


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer pods and policy changes")
    args = ap.parse_args()
    n_cli, n_api, n_pol = (15, 15, 6) if args.quick else (50, 50, 20)
    pods, pol = Samples(), Samples()
    with agent({"CILIA_SYNC_INTERVAL": "10"}) as cilia, tempfile.TemporaryDirectory() as tmp:
        cilia.apply(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n")
        pods_benchmark(cilia, n_cli, n_api, pods)
        rules_file = Path(tmp) / "rules.json"
        rules_file.write_text(json.dumps(RULES))
        policy_benchmark(cilia, n_pol, n_cli + n_api, rules_file, pol)
    ok = report(pods, pol, n_cli + n_api)
    save(
        "control-plane-quick" if args.quick else "control-plane",
        {"kernel": os.uname().release, "pods": pods, "policy": pol},
    )
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
