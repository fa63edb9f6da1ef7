"""Envoys in front of one server, the L7 benchmark's baselines.

`router_only`: a stock Envoy (same binary and worker count as Cilia's) with
only a router: no RBAC, no access log, no header rewrite, a static cluster.
`cilia_filters`: Cilia's own listener configuration (RBAC, header rewrite,
local reply mapper, keep-alive options) with a static upstream and no access
log, to tell what the filters cost from what the log and the transparent path
cost. Both listen on the node's router address, so a pod reaches them through
its veth and the host's routing, as it reaches Cilia's proxy.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cilia.policy.desired import Direction, L7Allow
from cilia.proxy.envoy import config as cfg
from cilia.proxy.envoy.process import EnvoyProcess

_T = "type.googleapis.com/envoy."
Address = tuple[str, int]
Bootstrap = Callable[[Path, Address], Any]
"""(directory, listen address) -> the static bootstrap of one baseline Envoy."""


def _admin(directory: Path) -> Any:
    return {"address": {"pipe": {"path": str(directory / "admin.sock"), "mode": 0o600}}}


def router_only(upstream: Address) -> Bootstrap:
    """One HTTP listener routing everything to `upstream`, nothing else."""
    return lambda directory, listen: _router_only(directory, listen, upstream)


def cilia_filters(
    upstream: Address, allows: tuple[L7Allow, ...], ipcache: Mapping[str, int]
) -> Bootstrap:
    """Cilia's listener for an ingress redirect with `allows`, minus the access log."""

    def build(directory: Path, listen: Address) -> Any:
        settings = cfg.Settings(directory, bind=listen[0], transparent=False)
        lst = cfg.HttpListener("filters", listen[1], Direction.INGRESS, allows, upstream)
        boot = cfg.static_bootstrap(settings, [lst], ipcache)
        for listener in boot["static_resources"]["listeners"]:
            del listener["filter_chains"][0]["filters"][0]["typed_config"]["access_log"]
        boot["admin"] = _admin(directory)
        return boot

    return build


def _router_only(directory: Path, listen: Address, upstream: Address) -> Any:
    hcm = {
        "@type": _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "plain",
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": "web", "timeout": "0s"}}
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _T + "extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    endpoint = {"address": {"socket_address": {"address": upstream[0], "port_value": upstream[1]}}}
    return {
        "admin": _admin(directory),
        "static_resources": {
            "listeners": [
                {
                    "name": "plain",
                    "address": {"socket_address": {"address": listen[0], "port_value": listen[1]}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "web",
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": "web",
                        "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
                    },
                }
            ],
        },
    }


def free_port(host: str) -> int:
    """A TCP port free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BaselineEnvoy:
    """Runs one baseline Envoy in `directory`, listening on `host` (stop() ends it, by PID)."""

    def __init__(self, directory: Path, host: str, bootstrap: Bootstrap) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.address = (host, free_port(host))
        path = directory / "bootstrap.json"
        path.write_text(json.dumps(bootstrap(directory, self.address)))
        self.process = EnvoyProcess(path, directory / "admin.sock")

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}/"

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def cpu_ticks(self) -> int:
        """CPU time (clock ticks, user + system) of the Envoy so far."""
        pid = self.process.pid
        if pid is None:
            return 0
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(stat[11]) + int(stat[12])
