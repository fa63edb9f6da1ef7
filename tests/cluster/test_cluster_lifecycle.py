"""`cilia cluster up|status|down` on real namespaces, and the CLI's node selection."""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
import subprocess
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import etcd3gw
import httpx
import pytest

from tests.cluster.harness import (
    ClusterHandle,
    base_env,
    cilia,
    kill_pid,
    leftovers,
    running_cluster,
)

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]


def test_status_shows_every_node_healthy(cluster: ClusterHandle) -> None:
    res = cluster.cluster("status", "-o", "json")
    assert res.code == 0, res.stderr
    data = res.json()
    assert data["healthy"] and data["etcd"]["healthy"] and not data["etcd"]["external"]
    assert [n["name"] for n in data["nodes"]] == ["node1", "node2", "node3"]
    for node in data["nodes"]:
        assert node["agent-alive"] and node["agent-healthy"] and node["netns-exists"], node
        assert node["agent"]["node"] == node["name"]
        assert node["underlay-ip"] == cluster.node(node["name"]).underlay_ip
    assert len({n["underlay-ip"] for n in data["nodes"]}) == 3
    table = cluster.cluster("status")
    assert table.code == 0
    assert all(re.search(rf"^{n}\s.*\syes\s+yes\s", table.stdout, re.M) for n in cluster.nodes)


def test_agents_run_in_their_node_namespace_with_cluster_flags(cluster: ClusterHandle) -> None:
    for name in cluster.nodes:
        node = cluster.node(name)
        assert node.agent_pid is not None
        netns = Path(f"/proc/{node.agent_pid}/ns/net").stat().st_ino
        assert netns == Path(f"/run/netns/{node.netns}").stat().st_ino
        argv = Path(f"/proc/{node.agent_pid}/cmdline").read_bytes().decode().split("\0")
        assert argv[argv.index("--node-name") + 1] == name
        assert f"etcd.address={cluster.etcd_node_url}" in argv
        assert argv[argv.index("--underlay-device") + 1] == "ul0"
        assert argv[argv.index("--lease-ttl") + 1] == "4"
        environ = Path(f"/proc/{node.agent_pid}/environ").read_bytes().split(b"\0")
        assert f"CILIA_BPF_DIR=/sys/fs/bpf/{cluster.prefix}-{name}".encode() in environ


def test_underlay_joins_the_nodes_and_reaches_etcd(cluster: ClusterHandle) -> None:
    first, *others = (cluster.node(n) for n in cluster.nodes)
    for other in others:
        ping = subprocess.run(
            ["nsenter", f"--net=/run/netns/{first.netns}", "ping", "-c1", "-W2", other.underlay_ip],
            capture_output=True,
            text=True,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
    node_ns = f"--net=/run/netns/{others[-1].netns}"
    url = f"{cluster.etcd_node_url}/health"
    health = subprocess.run(
        ["nsenter", node_ns, "curl", "-s", "-m2", "--noproxy", "*", url],
        capture_output=True,
        text=True,
    )
    assert '"health":"true"' in health.stdout.replace(" ", ""), health.stderr
    assert httpx.get(f"{cluster.etcd_url}/health").json()["health"] == "true"


def test_node_option_selects_each_agent(cluster: ClusterHandle) -> None:
    for name in cluster.nodes:
        res = cluster.run(name, "status", "-o", "json")  # CILIA_NODE
        assert res.code == 0, res.stderr
        assert res.json()["node"] == name
    flag = cilia(cluster.env(), "--node", "node2", "status", "-o", "json")
    assert flag.code == 0, flag.stderr
    assert flag.json()["node"] == "node2"


def test_first_node_is_the_default(cluster: ClusterHandle, tmp_path: Path) -> None:
    res = cluster.run(None, "status", "-o", "json")
    assert res.code == 0, res.stderr
    assert res.json()["node"] == "node1"
    local = cilia(cluster.env() | {"CILIA_RUN_DIR": str(tmp_path)}, "status")
    assert local.code == 1  # an explicit CILIA_RUN_DIR means the local agent: none runs there
    assert str(tmp_path / "cilia.sock") in local.stderr


def test_unknown_node_is_an_error_naming_the_nodes(cluster: ClusterHandle) -> None:
    res = cluster.run("node9", "status")
    assert res.code == 1
    assert "unknown node 'node9'" in res.stderr and "node1, node2, node3" in res.stderr
    assert cilia(cluster.env(), "--node", "node2", "down").code == 2  # never the local agent


def test_exec_runs_in_a_pod_of_the_selected_node(cluster: ClusterHandle) -> None:
    pod = f"exec-{secrets.token_hex(3)}"
    manifest = textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: {pod}, namespace: default, labels: {{app: {pod}}}}}
        spec:
          nodeName: node2
          containers:
          - name: main
            command: [sleep, "300"]
        """
    )
    assert cluster.run("node2", "apply", "-f", "-", input=manifest).code == 0
    try:
        pod_range = ipaddress.IPv4Network(
            cluster.run("node2", "status", "-o", "json").json()["pod-cidr"]
        )
        res = cluster.run("node2", "exec", f"default/{pod}", "--", "ip", "-o", "-4", "addr")
        assert res.code == 0, res.stderr
        ip = re.search(r"eth0\s+inet (\S+)/32", res.stdout)
        assert ip is not None and ipaddress.IPv4Address(ip.group(1)) in pod_range, res.stdout
    finally:
        assert cluster.run("node2", "delete", "pod", f"default/{pod}").code == 0


def test_status_fails_while_an_agent_is_down(cluster: ClusterHandle) -> None:
    cluster.kill_agent("node3")
    try:
        res = cluster.cluster("status", "-o", "json")
        assert res.code == 1
        node3 = res.json()["nodes"][2]
        assert not node3["agent-alive"] and not node3["healthy"]
    finally:
        cluster.restart_agent("node3")
    assert cluster.cluster("status").code == 0
    assert cluster.run("node3", "status", "-o", "json").json()["node"] == "node3"


def test_get_nodes_shows_every_node_from_any_node(cluster: ClusterHandle) -> None:
    cluster_range = ipaddress.IPv4Network(cluster.state.cluster_pod_cidr)
    for name in cluster.nodes:
        res = cluster.run(name, "get", "nodes", "-o", "json")
        assert res.code == 0, res.stderr
        listing = res.json()  # Kubernetes Nodes, as kubectl prints them
        assert listing["kind"] == "List" and listing["apiVersion"] == "v1"
        nodes = listing["items"]
        assert [n["metadata"]["name"] for n in nodes] == cluster.nodes
        for n in nodes:
            assert n["kind"] == "Node"
            internal = [a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"]
            assert internal == [cluster.node(n["metadata"]["name"]).underlay_ip]
            assert ipaddress.IPv4Network(n["spec"]["podCIDR"]).subnet_of(cluster_range)
            ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
            assert [c["status"] for c in ready] == ["True"]
        assert len({n["spec"]["podCIDR"] for n in nodes}) == len(nodes)
    node3 = cluster.run(None, "get", "node", "node3", "-o", "json").json()
    assert node3["kind"] == "Node" and node3["metadata"]["name"] == "node3"
    table = cluster.run(None, "get", "no", "node3")
    assert table.code == 0
    assert re.search(
        rf"^node3\s+{re.escape(cluster.node('node3').underlay_ip)}\s", table.stdout, re.M
    )
    assert cluster.run(None, "get", "nodes", "node9").code == 1


def test_kvstore_commands(cluster: ClusterHandle) -> None:
    base = f"test/{secrets.token_hex(3)}"
    assert cluster.run("node1", "kvstore", "set", f"{base}/a", "hello world").code == 0
    assert cluster.run("node1", "kvstore", "set", f"{base}/b", "2").code == 0
    got = cluster.run("node3", "kvstore", "get", f"{base}/a")
    assert got.code == 0 and got.stdout == f"{base}/a => hello world\n"
    listed = cluster.run("node2", "kvstore", "get", "--recursive", base, "-o", "json")
    assert [(kv["key"], kv["value"]) for kv in listed.json()] == [
        (f"{base}/a", "hello world"),
        (f"{base}/b", "2"),
    ]
    deleted = cluster.run("node2", "kvstore", "delete", f"{base}/a")
    assert deleted.code == 0 and "deleted 1 key" in deleted.stdout
    missing = cluster.run("node1", "kvstore", "get", f"{base}/a")
    assert missing.code == 1 and "not found" in missing.stderr
    assert cluster.run("node1", "kvstore", "delete", f"{base}/b").code == 0


def _tag(output: str) -> str | None:
    found = re.search(r"bridge c([0-9a-f]{6})br", output)
    return found.group(1) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--nodes=1", "--lease-ttl=4", "--lease-keepalive=5"], "lease_keepalive"),
        (["--nodes=1", "--kvstore-endpoint=http://127.0.0.1:{port}"], "does not answer"),
        (["--nodes=2", "--agent-arg=--pod-cidr=10.0.0.0/30"], ": agent exited; end of"),
        (["--nodes=2", "--timeout=0.1"], "not healthy after 0.1s"),
    ],
    ids=["bad-flag", "unusable-kvstore-endpoint", "agent-refuses-flag", "agents-too-slow"],
)
def test_failed_up_leaves_nothing_behind(tmp_path: Path, args: list[str], reason: str) -> None:
    directory = tmp_path / "c"
    args = [a.format(port=_free_port()) for a in args]
    res = cilia(base_env(directory), "cluster", "up", *args)
    assert res.code == 1
    assert reason in res.stderr
    assert not directory.exists()
    tag = _tag(res.stdout)
    if tag is not None:
        assert "removing what was built" in res.stdout
        assert leftovers(f"cilia-c{tag}", f"c{tag}", directory) == []


def test_second_up_in_the_same_directory_is_refused(cluster: ClusterHandle) -> None:
    res = cluster.cluster("up", "--nodes=1")
    assert res.code == 1
    assert f"a cluster ({cluster.prefix}) is already in {cluster.directory}" in res.stderr
    assert cluster.cluster("status").code == 0


def test_down_after_kill_9_of_an_agent_and_etcd(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with running_cluster(directory, "--nodes=2", logs=tmp_path / "logs") as small:
        pod = textwrap.dedent(
            """\
            apiVersion: v1
            kind: Pod
            metadata: {name: web, namespace: default, labels: {app: web}}
            spec:
              nodeName: node2
              containers:
              - name: web
                ports: [{containerPort: 80}]
            """
        )
        assert small.run("node2", "apply", "-f", "-", input=pod).code == 0
        assert any(
            n.name.startswith(f"{small.prefix}-node2_") for n in Path("/run/netns").iterdir()
        )
        assert small.state.etcd is not None and small.state.etcd.pid is not None
        small.kill_agent("node2")
        kill_pid(small.state.etcd.pid)

        status = small.cluster("status", "-o", "json")
        assert status.code == 1
        data = status.json()
        assert not data["etcd"]["healthy"]
        assert [n["agent-alive"] for n in data["nodes"]] == [True, False]

        down = small.cluster("down")
        assert down.code == 0, down.stderr
        assert "removed node2: pod default/web" in down.stdout
        assert f"removed {directory}" in down.stdout
        assert leftovers(small.prefix, small.state.device_prefix, directory) == []
        again = small.cluster("down")  # the context's own `down` runs a third time
        assert again.code == 0 and "no cluster in" in again.stdout


def test_external_kvstore_endpoint(tmp_path: Path) -> None:
    # The store is another cluster's etcd, stopped agents and all, so that only the
    # cluster under test writes to it: it listens on that cluster's bridge address,
    # which the host and, through their gateway, the new cluster's nodes reach.
    with running_cluster(tmp_path / "store", "--nodes=1") as store:
        store.kill_agent("node1", sig=15)
        etcd = store.etcd_node_url
        keep = f"test/keep-{secrets.token_hex(3)}"
        store_kv = _etcd(etcd)
        store_kv.delete_prefix("cilia/")  # what its agent wrote
        store_kv.put(keep, "kept")
        with running_cluster(tmp_path / "ext", "--nodes=1", f"--kvstore-endpoint={etcd}") as ext:
            data = ext.cluster("status", "-o", "json").json()
            assert data["etcd"]["external"] and data["etcd"]["healthy"]
            assert data["healthy"]
            assert ext.state.etcd is not None and ext.state.etcd.pid is None
            assert f"etcd.address={etcd}" in ext.node("node1").agent_argv
            store_kv.put("cilia/test-key", "x")
        assert _get(etcd, "cilia/test-key") is None  # `down` deleted cilia/ there
        assert _get(etcd, keep) == "kept"  # and nothing else
        assert store.cluster("status", "-o", "json").json()["etcd"]["healthy"]


def _etcd(url: str) -> etcd3gw.Etcd3Client:
    parts = urlsplit(url)
    return etcd3gw.client(host=parts.hostname or "", port=parts.port or 2379, timeout=5)


def _get(url: str, key: str) -> str | None:
    values = _etcd(url).get(key)
    return values[0].decode() if values else None
