"""`cilia cni install|uninstall`: the network configuration and the plugin binary.

The configuration is `00-cilia.conflist`, so it sorts before any other file in the
directory: runtimes that load only the first one (containerd's `ctr run --cni`,
libcni's default) pick Cilia.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from cilia.cni.plugin import SUPPORTED_VERSIONS

CONFLIST_NAME = "00-cilia.conflist"
PLUGIN_TYPE = "cilia-cni"


CONFLIST_VERSION = "1.0.0"
"""What the conflist declares: containerd 1.6's libcni reads only `cniVersion` and
refuses a 1.1.0 result; newer libcni picks the highest of `cniVersions` (1.1.0)."""


def conflist(network: str, agent_socket: Path) -> dict[str, object]:
    """The network configuration list naming the plugin and the agent's socket."""
    return {
        "cniVersion": CONFLIST_VERSION,
        "cniVersions": SUPPORTED_VERSIONS,
        "name": network,
        "plugins": [{"type": PLUGIN_TYPE, "agent-socket": str(agent_socket)}],
    }


def plugin_executable() -> Path:
    """The `cilia-cni` console script installed beside this Python."""
    script = Path(sys.executable).parent / PLUGIN_TYPE
    if script.exists():
        return script
    found = shutil.which(PLUGIN_TYPE)
    if found is None:
        raise FileNotFoundError(f"{PLUGIN_TYPE} is not installed (pip install cilia)")
    return Path(found)


def install(conf_dir: Path, bin_dir: Path, network: str, agent_socket: Path) -> list[Path]:
    """Write the conflist and link the plugin into bin_dir (atomically); returns both."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / PLUGIN_TYPE
    tmp_link = bin_dir / f".{PLUGIN_TYPE}.{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(plugin_executable())
    tmp_link.replace(target)
    conf = conf_dir / CONFLIST_NAME
    tmp_conf = conf_dir / f".{CONFLIST_NAME}.{os.getpid()}"
    tmp_conf.write_text(json.dumps(conflist(network, agent_socket), indent=2) + "\n")
    tmp_conf.replace(conf)
    return [conf, target]


def uninstall(conf_dir: Path, bin_dir: Path) -> list[Path]:
    """Remove what `install` wrote (a conflist that is not Cilia's stays); returns it."""
    removed: list[Path] = []
    conf = conf_dir / CONFLIST_NAME
    if conf.exists() and _is_ours(conf):
        conf.unlink()
        removed.append(conf)
    target = bin_dir / PLUGIN_TYPE
    if target.is_symlink() or target.exists():
        target.unlink()
        removed.append(target)
    return removed


def _is_ours(conf: Path) -> bool:
    try:
        plugins = json.loads(conf.read_text()).get("plugins", [])
    except (OSError, ValueError, AttributeError):
        return False
    return any(isinstance(p, dict) and p.get("type") == PLUGIN_TYPE for p in plugins)
