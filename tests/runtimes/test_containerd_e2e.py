"""End to end: a real agent, the private containerd and `cilia-cni`.

`ctr run --cni` reads only /etc/cni/net.d and /opt/cni/bin: `cilia cni install` writes
there for the test (no other file may sort before 00-cilia.conflist) and everything is
removed at the end. The agent watches containerd's `default` namespace (its fixed
list), so the ctr containers run there, their cgroups under this run's parent. The CRI
path goes through containerd's CRI plugin, whose CNI folders are private to the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.types
import pytest

from cilia.cli.client import ApiError
from cilia.runtime.probe import probe
from tests.integration.cni_tool import WEB
from tests.integration.harness import Cilia, running_agent
from tests.runtimes.containerd_fixture import CTR_DEFAULT, Containerd
from tests.runtimes.docker_fixture import DockerDaemon, dockerd
from tests.runtimes.fake_owner import wait_for

__all__ = ["dockerd"]

pytestmark = pytest.mark.integration

CTR_NAMESPACE = CTR_DEFAULT  # one of the agent's watched containerd namespaces
CNI_CONF_DIR = Path("/etc/cni/net.d")
CNI_BIN_DIR = Path("/opt/cni/bin")


@pytest.fixture
def agent(tmp_path: Path, containerd: Containerd, dockerd: DockerDaemon) -> Iterator[Cilia]:
    """An agent following the private containerd and dockerd (serving the Docker
    driver under a per-run name, which is also its Docker network's name)."""
    env = {
        "CILIA_CONTAINER_RUNTIME": '["containerd", "docker"]',
        "CILIA_CONTAINER_RUNTIME_ENDPOINT": json.dumps(
            {"containerd": containerd.socket, "docker": str(dockerd.socket)}
        ),
        "CILIA_DOCKER_PLUGIN_NAME": f"ce{secrets.token_hex(3)}",
    }
    with running_agent(tmp_path, **env) as agent:
        made = [d for d in (CNI_CONF_DIR, CNI_BIN_DIR) if not d.exists()]
        if not made and any(p.name < "00-cilia.conflist" for p in CNI_CONF_DIR.iterdir()):
            pytest.skip(f"{CNI_CONF_DIR} has a file sorting before Cilia's")
        socket = str(agent.config.socket_path)
        for conf_dir, bin_dir in (
            (CNI_CONF_DIR, CNI_BIN_DIR),
            (containerd.cni_conf_dir, containerd.cni_bin_dir),
        ):
            agent.run(
                "cni",
                "install",
                f"--conf-dir={conf_dir}",
                f"--bin-dir={bin_dir}",
                f"--agent-socket={socket}",
            )
        try:
            yield agent
        finally:
            containerd.remove_sandboxes()  # their CNI DEL needs the config
            for conf_dir, bin_dir in (
                (CNI_CONF_DIR, CNI_BIN_DIR),
                (containerd.cni_conf_dir, containerd.cni_bin_dir),
            ):
                agent.run("cni", "uninstall", f"--conf-dir={conf_dir}", f"--bin-dir={bin_dir}")
            for folder in reversed(made):
                folder.rmdir()
                if folder.parent.name in ("cni",) and not any(folder.parent.iterdir()):
                    folder.parent.rmdir()


def _endpoint(agent: Cilia, cid: str) -> dict[str, Any] | None:
    try:
        view: dict[str, Any] = agent.client.request("GET", f"/endpoint/container-id:{cid}")
    except ApiError:
        return None
    return view


def test_ctr_run_cni_gets_labels_and_leaves_nothing(agent: Cilia, containerd: Containerd) -> None:
    cid = f"web-{secrets.token_hex(3)}"
    cni_id = f"{CTR_NAMESPACE}-{cid}"
    cgroup = f"{containerd.cgroup_parent}/{cid}"
    try:
        containerd.ctr(
            "run",
            "-d",
            "--cni",
            "--cgroup",
            cgroup,
            "--label",
            "app=web",
            containerd.image,
            cid,
            namespace=CTR_NAMESPACE,
        )
        view = _endpoint(agent, cni_id)
        assert view is not None, "ctr run --cni returned before the endpoint existed"
        assert wait_for(
            lambda: "container:app=web" in ((_endpoint(agent, cni_id) or {}).get("labels") or [])
        )
        device = str(view["interface"])
        assert Path(f"/sys/class/net/{device}").exists()
        containerd.ctr("tasks", "kill", "-s", "SIGKILL", cid, namespace=CTR_NAMESPACE)
        assert wait_for(lambda: _endpoint(agent, cni_id) is None), "endpoint left after exit"
        assert wait_for(lambda: not Path(f"/sys/class/net/{device}").exists())
    finally:
        containerd.remove_container(cid, CTR_NAMESPACE)


def test_cri_sandbox_through_cilia_cni(agent: Cilia, containerd: Containerd) -> None:
    tag = secrets.token_hex(3)
    with containerd.cri() as cri:
        sid = cri.run_sandbox(
            f"db-{tag}",
            f"ns-{tag}",
            uid=tag,
            labels={"app": "db"},
            cgroup_parent=containerd.cgroup_parent,
        )
        try:
            view = _endpoint(agent, sid)
            assert view is not None
            status = cri.sandbox_status(sid)
            assert status is not None and status.ip == view["ipv4"]
            want = {"k8s:app=db", f"k8s:io.kubernetes.pod.namespace=ns-{tag}"}
            assert wait_for(lambda: want <= set((_endpoint(agent, sid) or {}).get("labels") or []))
            device = str(view["interface"])
            cri.stop_sandbox(sid)  # containerd sends the CNI DEL
            assert _endpoint(agent, sid) is None
            assert not Path(f"/sys/class/net/{device}").exists()
        finally:
            cri.stop_sandbox(sid)
            cri.remove_sandbox(sid)


def _reaches(netns: str, ip: str) -> bool:
    return asyncio.run(probe(netns, ip, 80, "TCP", 0.6)).result == "allowed"


def test_policy_between_ctr_container_and_local_pod(agent: Cilia, containerd: Containerd) -> None:
    """Real packets from the container's namespace to a local pod under one policy; a
    label change moves the container to another identity and flips the verdict."""
    agent.apply(WEB)
    web = agent.client.request("GET", "/endpoint/default/web")
    cid = f"cl-{secrets.token_hex(3)}"
    cni_id = f"{CTR_NAMESPACE}-{cid}"
    try:
        containerd.ctr(
            "run",
            "-d",
            "--cni",
            "--cgroup",
            f"{containerd.cgroup_parent}/{cid}",
            "--label",
            "app=other",
            containerd.image,
            cid,
            namespace=CTR_NAMESPACE,
        )

        def labels() -> list[str]:
            return list((_endpoint(agent, cni_id) or {}).get("labels") or [])

        assert wait_for(lambda: "container:app=other" in labels())
        view = _endpoint(agent, cni_id)
        assert view is not None
        netns, other_identity = str(view["netns"]), view["identity"]
        assert not _reaches(netns, web["ipv4"]), "app=other reached web"

        containerd.ctr("containers", "label", cid, "app=client", namespace=CTR_NAMESPACE)
        assert wait_for(lambda: "container:app=client" in labels())
        view = _endpoint(agent, cni_id)
        assert view is not None and view["identity"] != other_identity
        assert wait_for(lambda: _reaches(netns, web["ipv4"]), timeout=5), "app=client denied"
    finally:
        containerd.remove_container(cid, CTR_NAMESPACE)
        agent.delete(WEB)
    assert wait_for(lambda: _endpoint(agent, cni_id) is None)


def test_containerd_restart_keeps_running_containers(agent: Cilia, containerd: Containerd) -> None:
    """containerd restarts under a running container: its endpoint stays, and the
    agent's watcher reconnects (a container started after gets its labels)."""
    tag = secrets.token_hex(3)
    before, after = f"rb-{tag}", f"ra-{tag}"
    try:
        containerd.ctr(
            "run",
            "-d",
            "--cni",
            "--cgroup",
            f"{containerd.cgroup_parent}/{before}",
            "--label",
            "app=before",
            containerd.image,
            before,
            namespace=CTR_NAMESPACE,
        )
        key = f"{CTR_NAMESPACE}-{before}"
        assert wait_for(
            lambda: "container:app=before" in ((_endpoint(agent, key) or {}).get("labels") or [])
        )
        containerd.restart()
        containerd.ctr(
            "run",
            "-d",
            "--cni",
            "--cgroup",
            f"{containerd.cgroup_parent}/{after}",
            "--label",
            "app=after",
            containerd.image,
            after,
            namespace=CTR_NAMESPACE,
        )
        key_after = f"{CTR_NAMESPACE}-{after}"
        assert wait_for(
            lambda: (
                "container:app=after" in ((_endpoint(agent, key_after) or {}).get("labels") or [])
            ),
            timeout=20,
        )
        view = _endpoint(agent, key)
        assert view is not None and "container:app=before" in view["labels"]
        assert Path(f"/sys/class/net/{view['interface']}").exists()
    finally:
        for cid in (before, after):
            containerd.remove_container(cid, CTR_NAMESPACE)
    assert wait_for(lambda: _endpoint(agent, f"{CTR_NAMESPACE}-{before}") is None)


THREE = """
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  containers: [{name: srv, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: lclient, namespace: default, labels: {role: client}}
spec:
  containers: [{name: c, ports: [{containerPort: 81}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: clients-to-web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints:
        - matchLabels: {role: client}
        - matchLabels: {"container:role": client}
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


def _sandbox(container: Any) -> str:
    return str(container.attrs["NetworkSettings"]["SandboxKey"])


def test_three_runtimes_under_one_policy_and_an_agent_restart(
    agent: Cilia, containerd: Containerd, dockerd: DockerDaemon
) -> None:
    """A ctr container, Docker containers and local pods under one CiliumNetworkPolicy,
    real packets; the agent killed and restarted while they run keeps every verdict
    and every endpoint's identity."""
    agent.apply(THREE)
    web = agent.client.request("GET", "/endpoint/default/web")["ipv4"]
    lclient = agent.client.request("GET", "/pods/default/lclient/netns")["netns"]
    network = agent.env["CILIA_DOCKER_PLUGIN_NAME"]
    cid = f"tc-{secrets.token_hex(3)}"
    ctr_key = f"container-id:{CTR_NAMESPACE}-{cid}"
    with dockerd.client() as docker_client:
        docker_client.networks.create(
            network, driver=network, ipam=docker.types.IPAMConfig(driver=network)
        )
        try:
            containerd.ctr(
                "run",
                "-d",
                "--cni",
                "--cgroup",
                f"{containerd.cgroup_parent}/{cid}",
                "--label",
                "role=client",
                containerd.image,
                cid,
                namespace=CTR_NAMESPACE,
            )
            containers = {
                role: docker_client.containers.run(
                    dockerd.image,
                    ["sleep", "600"],
                    network=network,
                    labels={"role": role},
                    detach=True,
                )
                for role in ("client", "other")
            }
            for c in containers.values():
                c.reload()
            keys = {
                role: "container-id:docker:"
                + c.attrs["NetworkSettings"]["Networks"][network]["EndpointID"]
                for role, c in containers.items()
            }

            def view(key: str) -> dict[str, Any]:
                return dict(agent.client.request("GET", f"/endpoint/{key}"))

            def labelled(key: str, label: str) -> bool:
                try:
                    return label in view(key)["labels"]
                except ApiError:
                    return False

            assert wait_for(lambda: labelled(ctr_key, "container:role=client"))
            for role, key in keys.items():
                assert wait_for(lambda k=key, r=role: labelled(k, f"container:role={r}"))
            sources = {
                "ctr client": (view(ctr_key)["netns"], True),
                "docker client": (
                    containers["client"].attrs["NetworkSettings"]["SandboxKey"],
                    True,
                ),
                "docker other": (containers["other"].attrs["NetworkSettings"]["SandboxKey"], False),
                "local client": (lclient, True),
            }

            def verdicts() -> dict[str, bool]:
                return {name: _reaches(ns, web) for name, (ns, _) in sources.items()}

            want = {name: allowed for name, (_, allowed) in sources.items()}
            assert wait_for(lambda: verdicts() == want, timeout=5), verdicts()
            identities = {k: view(k)["identity"] for k in (ctr_key, *keys.values())}

            pid = int(agent.config.pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            assert verdicts() == want, "the kernel enforces while the agent is away"
            agent.start()
            assert verdicts() == want
            assert {k: view(k)["identity"] for k in identities} == identities
        finally:
            containerd.remove_container(cid, CTR_NAMESPACE)
            for c in docker_client.containers.list(all=True, filters={"network": network}):
                c.remove(force=True)
            docker_client.networks.get(network).remove()
