"""The BPF filesystem when the agent runs in a mount namespace of its own: the pins go
into the host's bpffs (they outlive the namespace), a restart in another mount
namespace finds them, and a pin directory on no bpffs is a clear start-up error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.harness import Cilia
from tests.integration.test_enforcement import RULE1

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

# A fresh mount namespace with nothing at /sys/fs/bpf, then `cilia up` in it.
UP_ALONE = 'umount /sys/fs/bpf 2>/dev/null; exec "$0" -m cilia.cli.main up'


def _up_in_own_mount_namespace(c: Cilia) -> subprocess.CompletedProcess[str]:
    argv = ["unshare", "--mount", "sh", "-c", UP_ALONE, sys.executable]
    return subprocess.run(argv, env=c.env, capture_output=True, text=True, timeout=120)


def _agent_pid(c: Cilia) -> int:
    return int(c.config.pid_file.read_text())


def _mount_ns(pid: int | str) -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "agent did not stop"


def test_pins_outlive_the_agents_mount_namespace(tmp_path: Path) -> None:
    c = Cilia(tmp_path)
    c.env["CILIA_HOST_PROC"] = f"/proc/{os.getpid()}"  # this test's namespace is the host's
    policy_pin = c.config.bpf_dir / "maps" / "cilia_policy"
    try:
        up = _up_in_own_mount_namespace(c)
        assert up.returncode == 0, up.stderr
        first = _agent_pid(c)
        assert _mount_ns(first) != _mount_ns("self")
        own_mounts = Path(f"/proc/{first}/mounts").read_text().splitlines()
        assert not any(line.split()[1] == "/sys/fs/bpf" for line in own_mounts)
        assert policy_pin.exists(), "pins not in the host's bpffs"
        inode = policy_pin.stat().st_ino
        assert "pinning into the host's bpffs" in c.config.log_file.read_text()
        c.apply(RULE1)
        revision = c.client.request("GET", "/policy")["revision"]

        _stop(first)
        assert policy_pin.stat().st_ino == inode, "the pins went with the agent"
        up = _up_in_own_mount_namespace(c)
        assert up.returncode == 0, up.stderr
        second = _agent_pid(c)
        assert _mount_ns(second) not in (_mount_ns("self"), 0)
        assert policy_pin.stat().st_ino == inode, "the maps were not reused"
        assert c.client.request("GET", "/policy")["revision"] == revision
    finally:
        left = c.stop()
    assert left == [], f"left behind: {left}"


def test_pin_directory_on_no_bpffs_is_a_clear_error(tmp_path: Path) -> None:
    c = Cilia(tmp_path)
    pins = tmp_path / "pins"
    c.env["CILIA_BPF_DIR"] = str(pins)
    res = c.run("up", check=False)
    assert res.code == 1
    assert f"bpf dir {pins} is on" in res.stderr and "not on a bpf filesystem" in res.stderr
    assert "Traceback" not in c.config.log_file.read_text()
    assert not pins.exists()
    assert not c.config.socket_path.exists()
