"""Policy resolution: 1,000 rules, 5,000 identities, 500 endpoints (pure Python, no kernel).

Measures the time to compute every endpoint's desired state from scratch, and
after one rule change incrementally (`PolicyResolver.updated` reuses compiled
rules; only endpoints the changed rule selects are re-resolved), against the
from-scratch time of the same run. Targets: full < 2 s, one change < 50 ms.
The incremental result is checked equal to a from-scratch resolution.
"""

from __future__ import annotations

import argparse
import functools
import random

from benchmarks.common import log, median, save, timed, verdict

from cilia.labels import Labels
from cilia.policy import EndpointPolicy, PolicyResolver, Rule, parse_rules

APPS, NAMESPACES = 250, 20


def identities(n: int) -> dict[int, Labels]:
    """n distinct label sets: app, namespace, tier and a unique instance label."""
    return {
        256 + i: Labels.parse(
            [
                f"k8s:app=app{i % APPS}",
                f"k8s:io.kubernetes.pod.namespace=ns{i % NAMESPACES}",
                f"k8s:tier={('web', 'api', 'db')[i % 3]}",
                f"k8s:instance=i{i}",
            ]
        )
        for i in range(n)
    }


def rule(i: int, rng: random.Random) -> dict[str, object]:
    """An L3/L4 ingress rule, an egress rule or a rule with requirements."""
    app, peer = rng.randrange(APPS), rng.randrange(APPS)
    ns = f"ns{rng.randrange(NAMESPACES)}"
    sel = {"matchLabels": {"app": f"app{app}", "k8s:io.kubernetes.pod.namespace": ns}}
    peer_sel = {"matchLabels": {"app": f"app{peer}"}}
    ports = [{"ports": [{"port": str(8000 + i % 50), "protocol": "TCP"}]}]
    kind = i % 4
    if kind == 0:
        return {
            "endpointSelector": sel,
            "ingress": [{"fromEndpoints": [peer_sel], "toPorts": ports}],
        }
    if kind == 1:
        return {"endpointSelector": sel, "egress": [{"toEndpoints": [peer_sel]}]}
    if kind == 2:
        expr = {"key": "tier", "operator": "In", "values": ["web", "api"]}
        return {
            "endpointSelector": sel,
            "ingress": [{"fromEndpoints": [{"matchExpressions": [expr]}]}],
        }
    return {
        "endpointSelector": sel,
        "ingress": [
            {
                "fromEntities": ["cluster"],
                "fromRequires": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": ns}}],
            }
        ],
    }


def resolve_all(resolver: PolicyResolver, endpoints: list[Labels]) -> list[EndpointPolicy]:
    return [resolver.resolve(labels) for labels in endpoints]


def incremental(
    old: PolicyResolver, policies: list[EndpointPolicy], endpoints: list[Labels], rules: list[Rule]
) -> tuple[PolicyResolver, list[EndpointPolicy], int]:
    """New resolver for `rules`; re-resolves only endpoints the changed rules select."""
    new = old.updated(rules)
    changed = old.changed_rules(new)
    out = list(policies)
    count = 0
    for i, labels in enumerate(endpoints):
        if PolicyResolver.affects(changed, labels):
            out[i] = new.resolve(labels)
            count += 1
    return new, out, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)
    ids = identities(5000)
    raw = [rule(i, rng) for i in range(1000)]
    rules = parse_rules(raw)
    endpoints = [ids[256 + i * 10] for i in range(500)]
    # Changes hit rules that select endpoints (so the incremental path has work to do).
    busy = [i for i, r in enumerate(rules) if any(r.selects(e) for e in endpoints)]
    full_s, incr_s, touched = [], [], []
    for r in range(args.rounds):
        seconds, (resolver, policies) = timed(
            lambda: (res := PolicyResolver(rules, ids), resolve_all(res, endpoints))
        )
        full_s.append(seconds)
        changed = list(rules)
        index = busy[r * 7 % len(busy)]
        replacement = {**rule(10_000 + r, rng), "endpointSelector": raw[index]["endpointSelector"]}
        changed[index] = parse_rules([replacement])[0]
        seconds, (_, new_policies, count) = timed(
            functools.partial(incremental, resolver, policies, endpoints, changed)
        )
        incr_s.append(seconds)
        touched.append(count)
        assert new_policies == resolve_all(PolicyResolver(changed, ids), endpoints)
        log(
            f"round {r}: full {full_s[-1]:.3f}s, one change {incr_s[-1] * 1e3:.1f} ms ({count} eps)"
        )
    full, incr = median(full_s), median(incr_s)
    print("Policy resolution: 1,000 rules, 5,000 identities, 500 endpoints")
    print(f"  from scratch (all endpoints):  {full:.3f} s   target < 2 s   {verdict(full < 2)}")
    print(
        f"  one rule changed (incremental): {incr * 1000:.1f} ms  ({incr / full:.4f} of from"
        f" scratch, {median(touched):.0f} endpoints re-resolved)   target < 50 ms"
        f"   {verdict(incr < 0.05)}"
    )
    save("policy_resolution", {"full_s": full_s, "incremental_s": incr_s, "touched": touched})
    return 0 if full < 2 and incr < 0.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
