"""The node selection (`--node`, CILIA_NODE) every command but `cluster` follows."""

from __future__ import annotations

import os

import click

from cilia.defaults import cluster_dir, cluster_exists

LOCAL_COMMANDS = {"agent", "up", "down"}
"""Commands that run or remove the local agent itself: node selection does not apply."""


def select_node(node: str | None, command: str | None) -> None:
    """Point this process's CILIA_* settings at the agent of `node`, or, when neither
    --node/CILIA_NODE nor CILIA_RUN_DIR is given, at the first node of a running cluster."""
    if command == "cluster":
        return
    if command in LOCAL_COMMANDS:
        if node:
            raise click.UsageError(
                f"--node/CILIA_NODE does not apply to `cilia {command}`: the agents of a "
                "cluster are started and removed by `cilia cluster up|down`"
            )
        return
    if node is None and "CILIA_RUN_DIR" in os.environ:
        return
    if not node and not cluster_exists():
        return  # no cluster: the local agent (and no pydantic or pathlib to import)
    from pathlib import Path

    from cilia.cluster.state import ClusterError, load_state

    directory = Path(cluster_dir())

    try:
        state = load_state(directory)
        if state is None or not state.nodes:
            if node:
                raise ClusterError(
                    f"no cluster in {directory} (start one with `cilia cluster up`, "
                    "or set CILIA_CLUSTER_DIR)"
                )
            return
        chosen = state.node(node) if node else state.nodes[0]
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    os.environ.update(chosen.env)
