"""Cross-node throughput: iperf3 TCP between pods of two nodes, over VXLAN.

Cilia: the pods' veths carry the endpoint programs with an allowing policy
(server ingress and client egress, so every data packet gets two verdicts and
CT lookups), the client's packets are tunnelled by `cilia_from_container`
(tunnel key, redirect) through the external-mode VXLAN device, whose
programs hand them to the server's endpoint with the VNI's identity.
Baseline: two other pods of the same two nodes, no program on their veths,
routed through a plain VXLAN device (VNI 42, static remote, port 4789) with the
same MTUs (devices 1500, pod routes and node routes 1450) and the same outer
UDP checksum setting (none). Both run on the same underlay in the same run,
alternating, the order rotating every round; target: Cilia / plain >= 0.9.

Exit code: 0 when the target is met, 3 when it is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import log, median, save, verdict
from pyroute2 import IPRoute
from tests.integration.overlay_nodes import MTU, Cluster, Node, Pod

from cilia.datapath.netns import popen_in_netns
from cilia.datapath.overlay import VXLAN_OVERHEAD
from cilia.datapath.pod_network import set_interface_sysctl
from cilia.policy.desired import Direction, EndpointPolicy, PolicyEntry, Protocol
from cilia.runtime.probe import probe
from cilia.runtime.processes import wait_listening

PORT = 5201
RATIO_TARGET = 0.9
PLAIN_VNI, PLAIN_PORT = 42, 4789
ID_CLIENT, ID_SERVER = 2001, 2002
MODES = ("plain VXLAN", "Cilia")


def plain_vxlan(cluster: Cluster, node: Node, peer: Node, remote_pods: list[Pod]) -> None:
    """The baseline device of `node` towards `peer`, with /32 routes to `remote_pods`
    (runs inside the node)."""
    name = f"{cluster.prefix}pv"
    with IPRoute() as ipr:
        ipr.link(
            "add",
            ifname=name,
            kind="vxlan",
            vxlan_id=PLAIN_VNI,
            vxlan_port=PLAIN_PORT,
            vxlan_group=peer.underlay_ip,
            vxlan_udp_csum=0,
            vxlan_learning=0,
            mtu=MTU,
        )
        index = ipr.link_lookup(ifname=name)[0]
        ipr.addr("add", index=index, address=f"169.254.42.{node.index}", prefixlen=24)
        ipr.link("set", index=index, state="up")
        for pod in remote_pods:
            ipr.route(
                "add",
                dst=f"{pod.ip}/32",
                gateway=f"169.254.42.{peer.index}",
                oif=index,
                metrics={"mtu": MTU - VXLAN_OVERHEAD},
            )
    set_interface_sysctl(name, "forwarding", "1")


def iperf(client: Pod, server: Pod, seconds: float) -> float:
    """Gbit/s received by the server in one run (first second omitted)."""
    argv = ["iperf3", "-c", server.ip, "-p", str(PORT), "-t", str(seconds), "-O", "1", "-J"]
    proc = popen_in_netns(client.path, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=seconds + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"iperf3 failed: {err.decode()[-400:]} {out.decode()[-400:]}")
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def forwarded(node: Node) -> int:
    """Packets the node's datapath forwarded."""
    return sum(p for (reason, _), (p, _) in node.dp.counters().items() if reason == 0)


def setup(cluster: Cluster) -> dict[str, tuple[Pod, Pod]]:
    """Two nodes; per mode a client pod on the first, an iperf3 server pod on the second."""
    a, b = cluster.add_node(), cluster.add_node()
    cilia = (a.add_pod(ID_CLIENT), b.add_pod(ID_SERVER))
    plain = (a.add_pod(ID_CLIENT + 10, attach=False), b.add_pod(ID_SERVER + 10, attach=False))
    cluster.connect()
    cluster.sync_ipcache()
    client, server = cilia
    server.program(
        EndpointPolicy(
            ingress_enforced=True,
            entries=frozenset({PolicyEntry(Direction.INGRESS, ID_CLIENT, PORT, Protocol.TCP)}),
        )
    )
    client.program(
        EndpointPolicy(
            egress_enforced=True,
            entries=frozenset({PolicyEntry(Direction.EGRESS, ID_SERVER, PORT, Protocol.TCP)}),
        )
    )
    a.call(plain_vxlan, cluster, a, b, [plain[1]])
    b.call(plain_vxlan, cluster, b, a, [plain[0]])
    for _, srv in (cilia, plain):
        cluster.start(["iperf3", "-s", "-p", str(PORT)], srv.path, f"iperf-{srv.ip}.log")
        if not wait_listening(srv.path, [PORT], timeout=10.0):
            raise RuntimeError(f"iperf3 server in {srv.net.netns} did not start")
    # The policy is enforced: the client may not reach the server on another port.
    denied = asyncio.run(probe(client.path, server.ip, PORT + 1, "TCP", 1.0))
    if denied.result != "denied" or denied.detail == "refused":
        raise RuntimeError(f"policy not enforced: {denied}")
    return {"Cilia": cilia, "plain VXLAN": plain}


def run(rounds: int, seconds: float) -> dict[str, list[float]]:
    """Samples per mode; raises if the modes did not take the paths they name."""
    cluster = Cluster("cb" + secrets.token_hex(3), Path(tempfile.mkdtemp(prefix="cilia-bench-")))
    samples: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        pods = setup(cluster)
        a = cluster.nodes[0]
        for r in range(rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for mode in order:
                before = forwarded(a)
                gbps = iperf(*pods[mode], seconds)
                through_programs = forwarded(a) - before > 1000
                if through_programs != (mode == "Cilia"):
                    raise RuntimeError(f"{mode} run took the wrong path ({through_programs=})")
                samples[mode].append(gbps)
                log(f"round {r + 1}/{rounds} {mode}: {gbps:.2f} Gbit/s")
    finally:
        left = cluster.cleanup()
        if left:
            raise RuntimeError(f"left behind: {left}")
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds of 2 s runs")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    rounds, seconds = (3, 2.0) if args.quick else (args.rounds, args.seconds)
    samples = run(rounds, seconds)
    plain, cilia = median(samples["plain VXLAN"]), median(samples["Cilia"])
    per_round = [c / p for c, p in zip(samples["Cilia"], samples["plain VXLAN"], strict=True)]
    ratio = cilia / plain
    ok = ratio >= RATIO_TARGET
    print("== Cross-node throughput (iperf3 TCP, pod to pod over VXLAN): Gbit/s medians ==")
    print(
        f"  plain VXLAN, no programs {plain:6.2f}  Cilia (tunnel + policy) {cilia:6.2f}  "
        f"Cilia/plain {ratio:.3f}  (per round: {', '.join(f'{x:.3f}' for x in per_round)})"
    )
    print(
        f"  [overlay] Cilia / plain VXLAN = {ratio:.3f} (target >= {RATIO_TARGET}): {verdict(ok)}"
    )
    save("overlay", {"rounds": rounds, "seconds": seconds, "samples": samples, "ratio": ratio})
    return 0 if ok else 3


if __name__ == "__main__":
    raise SystemExit(main())
