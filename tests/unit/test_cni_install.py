"""`cilia cni install|uninstall` with private directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CILIA = [sys.executable, "-m", "cilia.cli.main"]


def test_install_writes_the_first_conflist_and_uninstall_removes_only_ours(
    tmp_path: Path,
) -> None:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    (conf_dir / "10-other.conflist").write_text("{}")
    sock = tmp_path / "agent.sock"
    out = subprocess.run(
        [
            *CILIA,
            "cni",
            "install",
            "--conf-dir",
            str(conf_dir),
            "--bin-dir",
            str(bin_dir),
            "--agent-socket",
            str(sock),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["agent-socket"] == str(sock)
    assert sorted(os.listdir(conf_dir))[0] == "00-cilia.conflist"
    conf = json.loads((conf_dir / "00-cilia.conflist").read_text())
    assert conf["plugins"] == [{"type": "cilia-cni", "agent-socket": str(sock)}]
    assert "1.1.0" in conf["cniVersions"] and conf["name"] == "cilia"
    plugin = bin_dir / "cilia-cni"
    version = subprocess.run(
        [str(plugin)], env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True
    )
    assert json.loads(version.stdout)["cniVersion"] == "1.1.0"

    subprocess.run(
        [*CILIA, "cni", "uninstall", "--conf-dir", str(conf_dir), "--bin-dir", str(bin_dir)],
        check=True,
        capture_output=True,
    )
    assert os.listdir(conf_dir) == ["10-other.conflist"] and not plugin.exists()
