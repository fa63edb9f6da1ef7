"""Run the agent in the foreground: datapath, controllers and the API socket."""

from __future__ import annotations

import logging
import os
import signal
import sys

import uvicorn

from cilia.agent.api import create_app
from cilia.agent.clean_state import clean_state
from cilia.agent.config import AgentConfig
from cilia.agent.daemon import Agent
from cilia.agent.errors import AgentError
from cilia.datapath import bpffs

log = logging.getLogger("cilia.agent")


def run_agent(config: AgentConfig, log_level: str = "info") -> None:
    """Start the agent and serve its API until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Envoy admin call
    if os.geteuid() != 0:
        raise SystemExit("cilia agent must run as root (it programs the kernel)")
    # Every process the agent starts (containers, Envoy) inherits this, which is how
    # `cilia down` finds them even after a crash.
    os.environ["CILIA_NAME_PREFIX"] = config.name_prefix
    try:
        pins = bpffs.pin_dir(config.bpf_dir, config.host_proc)
    except bpffs.BpffsError as exc:
        raise SystemExit(f"cilia agent: {exc}") from None
    if pins != config.bpf_dir:
        config = config.model_copy(update={"bpf_dir": pins})
        log.info("own mount namespace: pinning into the host's bpffs at %s", config.bpf_dir)
    if config.clean_state:
        try:
            clean_state(config)
        except AgentError as exc:
            raise SystemExit(str(exc)) from None
    agent = Agent(config)
    agent.start()
    sock = config.socket_path
    sock.unlink(missing_ok=True)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(agent),
            uds=str(sock),
            log_level="warning",
            lifespan="off",
        )
    )
    os.umask(0o077)  # the socket is root-only: it controls the node's network policy
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with the default
    # handler that would end the process before the agent stops its proxies.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        agent.stop()
        sock.unlink(missing_ok=True)
        log.info("agent stopped; pods and enforcement stay in place")
