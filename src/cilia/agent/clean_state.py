"""`--clean-state`: start from nothing, like the reference's clean-cilium-state init container.

Before the agent starts, everything an earlier run of it left is removed through the
very code `cilia down` uses (`cleanup.remove_state`): pods and their namespaces, the
network of runtime endpoints, processes (Envoy, pod responders), devices, routes, the
router address, the pins under its bpffs directory and its state files. The agent then
starts with no endpoints and restores nothing.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from pathlib import Path

from cilia.agent.cleanup import remove_state
from cilia.agent.config import AgentConfig
from cilia.agent.errors import AgentError

log = logging.getLogger("cilia.clean-state")


def _answers(path: Path) -> bool:
    """Does a process listen on this unix socket (a live agent)?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def clean_state(config: AgentConfig) -> dict[str, int]:
    """Remove the earlier state of this agent; returns how many things of each kind went.

    Refuses while another agent answers on this agent's socket: its state is live.
    """
    if _answers(config.socket_path):
        raise AgentError(
            f"--clean-state: an agent is running on {config.socket_path}; stop it first"
        )
    removed = remove_state(config, starting=True)
    for item in removed:
        log.info("removed %s", item.text)
    counts = dict(sorted(Counter(item.kind for item in removed).items()))
    summary = " ".join(f"{kind}={n}" for kind, n in counts.items()) or "nothing"
    log.info("earlier state removed: %s", summary)
    return counts
