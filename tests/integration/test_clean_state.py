"""`--clean-state` and the agent's configuration file, on a real agent.

A crashed agent (kill -9) leaves its pods, devices, namespaces, pins, state and pod
processes behind; `cilia up --clean-state` removes them all before starting, and the
agent restores nothing. A normal restart after a crash restores (see
test_lifecycle.test_restart_keeps_flows_and_enforcement, and the last test here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cilia.runtime.processes import ProcessRecord, process_alive
from tests.integration.cni_tool import cni, plugin_conf, sandbox, sandboxes
from tests.integration.harness import Cilia, running_agent
from tests.integration.test_enforcement import DS, RULE1, STARWARS, TF, XW
from tests.integration.test_l7_http import PODS, SA_POLICY

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

__all__ = ["sandboxes"]


def _kill9(c: Cilia) -> None:
    pid = int(c.config.pid_file.read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@dataclass
class Left:
    """What an agent with pods leaves in the kernel when it dies."""

    devices: set[str]
    netns: set[str]
    processes: list[ProcessRecord]
    map_inode: int
    links: set[str]

    @classmethod
    def by(cls, c: Cilia) -> Left:
        state = json.loads(c.config.state_file.read_text())
        return cls(
            devices=c.devices(),
            netns={ep["netns"] for ep in state["endpoints"]},
            processes=[
                ProcessRecord.from_dict(c["process"])
                for ep in state["endpoints"]
                for c in ep["containers"]
                if c["process"]
            ]
            + (
                [ProcessRecord.from_dict(state["responder_host"])]
                if state["responder_host"]
                else []
            ),
            map_inode=(c.config.bpf_dir / "maps" / "cilia_policy").stat().st_ino,
            links={p.name for p in (c.config.bpf_dir / "links").iterdir()},
        )


def test_clean_state_removes_what_a_crashed_agent_left(tmp_path: Path) -> None:
    c = Cilia(tmp_path)
    try:
        c.start()
        c.apply(STARWARS + "---\n" + RULE1)
        before = Left.by(c)
        assert len(before.devices) == 3 and len(before.netns) == 3 and before.processes
        _kill9(c)
        # Everything is still there without an agent (restart without disruption).
        assert all(Path(f"/sys/class/net/{d}").exists() for d in before.devices)
        assert all(process_alive(p) for p in before.processes)

        out = c.run("up", "--clean-state")
        assert "agent running" in out.stdout
        assert c.client.request("GET", "/endpoint") == []
        assert c.run("get", "pods", "-A", "-o", "json").json()["items"] == []
        assert c.client.request("GET", "/policy")["rules"] == []
        assert not any(Path(f"/sys/class/net/{d}").exists() for d in before.devices)
        assert not any(Path(netns).exists() for netns in before.netns)
        assert not any(process_alive(p) for p in before.processes)
        # Fresh pins: new maps, and no link of an old pod's device.
        assert (c.config.bpf_dir / "maps" / "cilia_policy").stat().st_ino != before.map_inode
        links = {p.name for p in (c.config.bpf_dir / "links").iterdir()}
        old_pods = {name for name in before.links if name.startswith("lxc")}
        assert old_pods and not (links & old_pods)
        log = c.config.log_file.read_text()
        assert "cilia.clean-state: removed pod default/xwing" in log
        assert "cilia.clean-state: removed responder host" in log
        assert "earlier state removed: address=1 device=1 pins=1 pod=3 process=1 state=1" in log
        assert json.loads(c.config.state_file.read_text())["endpoints"] == []

        # The clean agent works: pods come up and policy is enforced.
        c.apply(STARWARS + "---\n" + RULE1)
        assert c.probe(TF, DS) and not c.probe(XW, DS)
    finally:
        left = c.stop()
    assert left == []


def test_clean_state_stops_the_envoy_a_crashed_agent_left(tmp_path: Path) -> None:
    c = Cilia(tmp_path)
    try:
        c.start()
        c.apply(PODS + "---\n" + SA_POLICY)
        envoy = subprocess.run(
            ["pgrep", "-f", f"{c.config.state_dir}/proxy/envoy"], capture_output=True, text=True
        ).stdout.split()
        assert len(envoy) == 1
        stat = Path(f"/proc/{envoy[0]}/stat").read_text().rsplit(")", 1)[1].split()
        proc = ProcessRecord(int(envoy[0]), int(stat[19]), ("envoy",))
        _kill9(c)
        assert process_alive(proc), "Envoy outlives a killed agent"

        c.run("up", "--clean-state")
        assert not process_alive(proc)  # at most a zombie nobody reaped yet
        log = c.config.log_file.read_text()
        assert f"removed process {envoy[0]} (" in log and "process=2 route=1" in log, log
        assert c.client.request("GET", "/endpoint") == []
    finally:
        left = c.stop()
    assert left == []


def test_without_a_state_file_the_pins_name_the_devices(
    tmp_path: Path, sandboxes: list[str]
) -> None:
    c = Cilia(tmp_path)
    c.env["CILIA_CONTAINER_RUNTIME"] = '["none"]'
    try:
        c.start()
        c.apply(STARWARS)
        netns = sandbox(sandboxes)
        code, res = cni("ADD", plugin_conf(c.config.socket_path), f"cni-{c.tag}", netns)
        assert code == 0, res
        container_dev = res["interfaces"][0]["name"]
        devices = c.devices()
        assert container_dev in devices and len(devices) == 4
        _kill9(c)
        c.config.state_file.unlink()  # lost: only the kernel knows the devices now

        c.run("up", "--clean-state")
        assert c.client.request("GET", "/endpoint") == []
        assert not any(Path(f"/sys/class/net/{d}").exists() for d in devices)
        assert Path(netns).exists(), "the container's namespace is its runtime's"
        log = c.config.log_file.read_text()
        assert f"removed device {container_dev} (attached, not in the state)" in log, log
    finally:
        left = c.stop()
    assert left == []


def test_clean_state_refuses_while_an_agent_runs(tmp_path: Path) -> None:
    with running_agent(tmp_path) as c:
        c.apply(STARWARS)
        res = c.run("up", "--clean-state", check=False)
        assert res.code == 1 and "an agent is running" in res.stderr, res.stderr
        assert len(c.client.request("GET", "/endpoint")) == 3


def test_clean_state_from_the_environment_and_a_normal_restart_restores(
    tmp_path: Path,
) -> None:
    c = Cilia(tmp_path)
    try:
        c.start()
        c.apply(STARWARS)
        ids = {ep["id"] for ep in c.client.request("GET", "/endpoint")}
        _kill9(c)
        c.start()  # a normal start after a crash: everything restored
        assert {ep["id"] for ep in c.client.request("GET", "/endpoint")} == ids
        assert c.probe(TF, DS)
        _kill9(c)
        c.env["CILIA_CLEAN_STATE"] = "true"
        c.start()
        assert c.client.request("GET", "/endpoint") == []
        settings = c.run("config", "--agent", "-o", "json").json()
        assert settings["clean-state"] == {"value": True, "source": "env CILIA_CLEAN_STATE"}
    finally:
        left = c.stop()
    assert left == []


def test_config_file_environment_and_flag_each_show_their_source(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "# cilia agent settings\n"
        "mtu: 1400\n"
        "ct-gc-interval: 30\n"
        "monitor-queue-size: 1024\n"
        "container-runtime: [none]\n"
    )
    c = Cilia(tmp_path)
    c.env["CILIA_CT_GC_INTERVAL"] = "45"
    try:
        c.run("up", "--config-file", str(config), "--mtu", "1450")
        settings = c.run("config", "--agent", "-o", "json").json()
        assert settings["mtu"] == {"value": 1450, "source": "flag --mtu"}
        assert settings["ct-gc-interval"] == {"value": 45.0, "source": "env CILIA_CT_GC_INTERVAL"}
        assert settings["monitor-queue-size"] == {"value": 1024, "source": f"file {config}"}
        assert settings["container-runtime"] == {"value": ["none"], "source": f"file {config}"}
        assert settings["ct-max-entries"] == {"value": 262144, "source": "default"}
        assert settings["config-file"] == {"value": str(config), "source": "flag --config-file"}
        assert settings["pod-cidr"]["source"] == "env CILIA_POD_CIDR"
        table = c.run("config", "--agent").stdout.splitlines()
        assert table[0].split() == ["KEY", "VALUE", "SOURCE"]
        assert ["mtu", "1450", "flag", "--mtu"] in [line.split() for line in table]
        assert c.run("config", "--agent", "-o", "yaml").stdout.startswith("run-dir:")
        # The runtime options keep their own output.
        assert c.run("config").stdout.split() == ["TraceNotification", "Disabled"]
        assert c.run("config", "-o", "json").json() == {"TraceNotification": False}
        # The pods get the file's MTU through the flag's override.
        c.apply(STARWARS)
        dev = c.client.request("GET", f"/endpoint/{DS}")["interface"]
        assert Path(f"/sys/class/net/{dev}/mtu").read_text().strip() == "1450"
    finally:
        left = c.stop()
    assert left == []


def test_a_bad_config_file_stops_up_before_anything_starts(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    c = Cilia(tmp_path)
    for text, message in (
        ("pod-cidrr: 10.1.0.0/16\n", f"config file {config}: unknown key 'pod-cidrr'"),
        (
            "mtu: big\n",
            f"mtu: Input should be a valid integer, unable to parse string as an integer"
            f" (from file {config})",
        ),
    ):
        config.write_text(text)
        res = c.run("up", "--config-file", str(config), check=False)
        assert res.code == 1 and message in res.stderr, res.stderr
        assert str(config) in res.stderr
        assert not c.config.pid_file.exists()
