"""The CNI plugin against a real agent: namespaces made by the test play the runtime."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.datapath.netns import delete_netns, popen_in_netns
from cilia.runtime.probe import probe
from tests.integration.cni_tool import WEB, cni, plugin_conf, sandbox, sandboxes

__all__ = ["sandboxes"]
from tests.integration.harness import Cilia, running_agent

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cilia]:
    with running_agent(
        tmp_path_factory.mktemp("cni-agent"), CILIA_CONTAINER_RUNTIME='["none"]'
    ) as a:
        a.apply(WEB)
        yield a


@pytest.fixture
def conf(agent: Cilia) -> dict[str, Any]:
    return plugin_conf(agent.config.socket_path)


def reaches(netns: str, ip: str, port: int = 80) -> bool:
    return asyncio.run(probe(netns, ip, port, "TCP", 0.6)).result == "allowed"


def host_devices() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def test_version_and_bad_input_are_cni_errors(conf: dict[str, Any]) -> None:
    code, out = cni("VERSION", conf)
    assert code == 0 and out["supportedVersions"] == ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    cases = [
        ("ADD", "{not json", {}, 6),
        ("ADD", {**conf, "cniVersion": "0.2.0"}, {}, 1),
        ("ADD", {k: v for k, v in conf.items() if k != "type"}, {}, 7),
        ("ADD", {**conf, "agent-socket": "relative.sock"}, {}, 7),
        ("ADD", conf, {"CNI_NETNS": ""}, 4),
        ("ADD", conf, {"CNI_ARGS": "K8S_POD_NAME"}, 4),
        ("FROB", conf, {}, 4),
        ("GC", conf, {}, 7),
    ]
    for command, stdin, env, want in cases:
        env = {"CNI_CONTAINERID": "c-bad", "CNI_NETNS": "/proc/self/ns/net", **env}
        code, err = cni(command, stdin, **env)
        assert code == 1, (command, stdin, env)
        assert err["code"] == want and err["msg"], (command, stdin, env, err)
        assert err["cniVersion"] in ("1.1.0", "0.2.0") or err["code"] == 6


def test_add_enforces_init_then_labels_move_the_identity(
    agent: Cilia, conf: dict[str, Any], sandboxes: list[str]
) -> None:
    web = agent.client.request("GET", "/endpoint/default/web")
    netns = sandbox(sandboxes)
    cid = f"cni-{secrets.token_hex(4)}"
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=client-1"
    code, res = cni("ADD", conf, cid, netns, CNI_ARGS=args)
    assert code == 0, res
    assert res["cniVersion"] == "1.1.0"
    pod_if = res["interfaces"][1]
    assert pod_if["name"] == "eth0" and pod_if["sandbox"] == netns and pod_if["mac"]
    ip = res["ips"][0]["address"].split("/")[0]
    assert res["ips"][0] == {"address": f"{ip}/32", "gateway": "169.254.1.1", "interface": 1}
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]

    ep = agent.client.request("GET", f"/endpoint/container-id:{cid}")
    assert ep["identity"] == 5 and ep["labels"] == ["reserved:init"]
    assert ep["pod"] == "shop/client-1" and ep["state"] == "ready" and ep["runtime"] == "cni"
    assert not reaches(netns, web["ipv4"]), "init identity is not a client"

    ep = agent.client.request(
        "PATCH", f"/endpoint/container-id:{cid}", json={"labels": ["container:app=client"]}
    )
    assert ep["identity"] not in (0, 5) and ep["labels"] == ["container:app=client"]
    assert reaches(netns, web["ipv4"])

    ep = agent.client.request(
        "PATCH", f"/endpoint/container-id:{cid}", json={"labels": ["container:app=other"]}
    )
    assert not reaches(netns, web["ipv4"])

    code, out = cni("DEL", conf, cid, netns)
    assert code == 0 and out is None
    assert ep["interface"] not in host_devices()
    assert cid not in {e["container-id"] for e in agent.client.request("GET", "/endpoint")}
    assert ep["identity"] not in {i["id"] for i in agent.client.request("GET", "/identity")}
    code, _ = cni("DEL", conf, cid, "")  # again, and without a namespace: still fine
    assert code == 0


def test_failed_add_leaves_nothing(
    agent: Cilia, conf: dict[str, Any], sandboxes: list[str], tmp_path: Path
) -> None:
    before, endpoints = host_devices(), agent.client.request("GET", "/endpoint")
    not_a_netns = tmp_path / "file"
    not_a_netns.write_text("")
    code, err = cni("ADD", conf, "cni-fail-1", str(not_a_netns))
    assert code == 1 and err["code"] == 100 and "netns" in err["details"], err

    netns = sandbox(sandboxes)
    code, res = cni("ADD", conf, "cni-fail-2", netns)
    assert code == 0, res
    # The agent refuses the same container in another namespace: nothing changes.
    code, err = cni("ADD", conf, "cni-fail-2", sandbox(sandboxes))
    assert code == 1 and err["code"] == 100 and "already has endpoint" in err["details"]
    assert cni("DEL", conf, "cni-fail-2", netns)[0] == 0
    assert host_devices() == before
    assert agent.client.request("GET", "/endpoint") == endpoints


def test_check_and_gc(agent: Cilia, conf: dict[str, Any], sandboxes: list[str]) -> None:
    a, b = sandbox(sandboxes), sandbox(sandboxes)
    tag = secrets.token_hex(3)
    code, res_a = cni("ADD", conf, f"gc-a-{tag}", a)
    assert code == 0
    assert cni("ADD", conf, f"gc-b-{tag}", b)[0] == 0
    check_conf = {**conf, "prevResult": res_a}
    code, err = cni("CHECK", check_conf, f"gc-a-{tag}", a)
    assert code == 0, err

    ip = res_a["ips"][0]["address"]
    cmd = ["ip", "addr", "del", ip, "dev", "eth0"]
    assert popen_in_netns(a, cmd, stdout=None, stderr=None).wait(5) == 0
    code, err = cni("CHECK", check_conf, f"gc-a-{tag}", a)
    assert code == 1 and err["code"] == 102 and "lacks address" in err["details"], err
    code, err = cni("CHECK", conf, f"gc-unknown-{tag}", a)
    assert code == 1 and err["code"] == 3

    keep = [{"containerID": f"gc-a-{tag}", "ifname": "eth0"}]
    code, err = cni("GC", {**conf, "cni.dev/valid-attachments": keep})
    assert code == 0, err
    left = {e["container-id"] for e in agent.client.request("GET", "/endpoint")}
    assert f"gc-a-{tag}" in left and f"gc-b-{tag}" not in left
    assert "local:default:web" in left, "GC never touches local pods"
    assert cni("DEL", conf, f"gc-a-{tag}", a)[0] == 0


def test_status_and_an_absent_agent(conf: dict[str, Any], tmp_path: Path) -> None:
    assert cni("STATUS", conf) == (0, None)
    away = {**conf, "agent-socket": str(tmp_path / "none.sock")}
    code, err = cni("STATUS", away)
    assert code == 1 and err["code"] == 50
    code, err = cni("ADD", away, "c-away", "/proc/self/ns/net")
    assert code == 1 and err["code"] == 11


def test_older_versions_get_their_result_format(conf: dict[str, Any], sandboxes: list[str]) -> None:
    for version in ("0.3.1", "0.4.0", "1.0.0"):
        netns = sandbox(sandboxes)
        cid = f"v-{version.replace('.', '')}-{secrets.token_hex(3)}"
        code, res = cni("ADD", {**conf, "cniVersion": version}, cid, netns)
        assert code == 0 and res["cniVersion"] == version
        assert ("version" in res["ips"][0]) == version.startswith("0.")
        assert "mtu" not in res["interfaces"][1]
        assert cni("DEL", {**conf, "cniVersion": version}, cid, netns)[0] == 0


def test_agent_restart_keeps_container_endpoints(
    agent: Cilia, conf: dict[str, Any], sandboxes: list[str]
) -> None:
    web = agent.client.request("GET", "/endpoint/default/web")
    netns = sandbox(sandboxes)
    gone = sandbox(sandboxes)
    cid, cid_gone = f"rs-{secrets.token_hex(3)}", f"rs-gone-{secrets.token_hex(3)}"
    assert cni("ADD", conf, cid, netns)[0] == 0
    assert cni("ADD", conf, cid_gone, gone)[0] == 0
    ep = agent.client.request(
        "PATCH", f"/endpoint/container-id:{cid}", json={"labels": ["container:app=client"]}
    )
    os.kill(int(agent.config.pid_file.read_text()), signal.SIGKILL)
    delete_netns(Path(gone).name)  # this container ends while the agent is away
    time.sleep(0.2)
    assert reaches(netns, web["ipv4"]), "the kernel enforces without the agent"
    agent.start()
    after = agent.client.request("GET", f"/endpoint/container-id:{cid}")
    assert (after["identity"], after["ifindex"]) == (ep["identity"], ep["ifindex"])
    assert reaches(netns, web["ipv4"])
    left = {e["container-id"] for e in agent.client.request("GET", "/endpoint")}
    assert cid_gone not in left, "an endpoint whose namespace went away is removed"
    assert cni("DEL", conf, cid, netns)[0] == 0
