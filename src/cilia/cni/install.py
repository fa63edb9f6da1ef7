"""`cilia cni install|uninstall`: the network configuration and the plugin binary.

The configuration is `00-cilia.conflist`, so it sorts before any other file in the
directory: runtimes that load only the first one (containerd's `ctr run --cni`,
libcni's default) pick Cilia.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cilia
from cilia.cni.spec import SUPPORTED_VERSIONS

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


LAUNCHER = """#!{python} -IS
# cilia-cni, written by `cilia cni install`. Isolated and without site: the plugin
# runs once per container and starts in a few milliseconds this way.
import sys

sys.path.insert(0, {root!r})
from cilia.cni.plugin import main

main()
"""


def launcher() -> str:
    """The plugin's launcher: this Python, told where the `cilia` package is, so it
    needs neither `site` (the .pth files of a virtualenv) nor pip's wrapper."""
    root = str(Path(cilia.__file__).resolve().parent.parent)
    return LAUNCHER.format(python=sys.executable, root=root)


def install(conf_dir: Path, bin_dir: Path, network: str, agent_socket: Path) -> list[Path]:
    """Write the conflist and the plugin's launcher into bin_dir (each atomically);
    returns both."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / PLUGIN_TYPE
    tmp_plugin = bin_dir / f".{PLUGIN_TYPE}.{os.getpid()}"
    tmp_plugin.unlink(missing_ok=True)
    tmp_plugin.write_text(launcher())
    tmp_plugin.chmod(0o755)
    tmp_plugin.replace(target)
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
