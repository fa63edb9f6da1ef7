"""Envoy configuration for HTTP redirects: bootstrap, listeners, clusters and routes (JSON dicts).

One listener per redirect. Its HTTP connection manager takes routes from a
per-listener RDS file; the RBAC allow-list lives in the route (per-route
filter config), so a policy change rewrites only that file and never drains
the listener's established connections. Requests go to the original
destination (ORIGINAL_DST cluster: the accepted socket's local address) or,
in plain mode, to a fixed upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cilia.policy.desired import Direction, L7Allow
from cilia.proxy.envoy.accesslog import listener_format
from cilia.proxy.envoy.rbac import rbac_policies
from cilia.proxy.sockets import ANY, KeepAlive, listen_hosts

Json = dict[str, Any]

ORIGINAL_DST_CLUSTER = "cilia-original-dst"
ORIGINAL_DST_HEADER = "x-cilia-original-dst"
DENIED_BODY = "Access denied"
_T = "type.googleapis.com/envoy."
LISTENER_TYPE = _T + "config.listener.v3.Listener"
CLUSTER_TYPE = _T + "config.cluster.v3.Cluster"
ROUTE_TYPE = _T + "config.route.v3.RouteConfiguration"


@dataclass(frozen=True)
class HttpListener:
    """One HTTP redirect as Envoy serves it."""

    name: str
    port: int
    direction: Direction
    allows: tuple[L7Allow, ...]
    upstream: tuple[str, int] | None = None
    """None: the original destination (transparent mode); else a fixed upstream (plain mode)."""
    source_identity: int = 0
    """Egress: the endpoint's identity, carried in the upstream mark (0: none)."""


@dataclass(frozen=True)
class Settings:
    """Node-wide Envoy settings."""

    directory: Path
    """Where bootstrap, xDS files, admin socket and access log live (the watched directory)."""
    bind: str = ANY
    """`ANY`: both families' wildcards, one socket each (`listen_hosts`)."""
    transparent: bool = True
    keepalive: KeepAlive = field(default_factory=KeepAlive)
    connect_timeout_s: int = 5
    upstream_mark: int = 0
    """SO_MARK of upstream connections (0: none): tells the datapath the proxy relays.
    A listener's source identity goes in bits 16-31 (its own original-dst cluster)."""

    @property
    def admin_socket(self) -> Path:
        return self.directory / "admin.sock"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def xds_path(self, name: str) -> Path:
        return self.directory / f"{name}.json"


def _source(s: Settings, name: str) -> Json:
    return {
        "resource_api_version": "V3",
        "path_config_source": {
            "path": str(s.xds_path(name)),
            "watched_directory": {"path": str(s.directory)},
        },
    }


def bootstrap(s: Settings) -> Json:
    """Bootstrap: admin on a unix socket, listeners and clusters from watched files."""
    return {
        "node": {"id": "cilia-proxy", "cluster": "cilia"},
        "admin": {"address": {"pipe": {"path": str(s.admin_socket), "mode": 0o600}}},
        "dynamic_resources": {"lds_config": _source(s, "lds"), "cds_config": _source(s, "cds")},
    }


def _keepalive_options(ka: KeepAlive) -> list[Json]:
    options = [(1, 9, 1), (6, 4, ka.idle), (6, 5, ka.interval), (6, 6, ka.count)]
    return [
        {"level": level, "name": name, "int_value": value, "state": "STATE_PREBIND"}
        for level, name, value in options
    ]


def _upstream_cluster(lst: HttpListener) -> str:
    if lst.upstream is not None:
        return f"{lst.name}-upstream"
    if lst.source_identity:
        return f"{ORIGINAL_DST_CLUSTER}-{lst.source_identity}"
    return ORIGINAL_DST_CLUSTER


def listener(s: Settings, lst: HttpListener) -> Json:
    """A listener whose filter chain never changes with policy (rules live in its routes)."""
    hcm = {
        "@type": _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": lst.name,
        "codec_type": "AUTO",
        "generate_request_id": False,
        "server_header_transformation": "PASS_THROUGH",
        "rds": {"route_config_name": lst.name, "config_source": _source(s, f"rds-{lst.name}")},
        "http_filters": [
            {
                "name": "envoy.filters.http.rbac",
                "typed_config": {
                    "@type": _T + "extensions.filters.http.rbac.v3.RBAC",
                    "rules": {"action": "ALLOW", "policies": {}},
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": _T + "extensions.filters.http.router.v3.Router",
                    "suppress_envoy_headers": True,
                    # After the host is chosen: the server never sees our header.
                    "upstream_http_filters": [
                        {
                            "name": "envoy.filters.http.header_mutation",
                            "typed_config": {
                                "@type": _T
                                + "extensions.filters.http.header_mutation.v3.HeaderMutation",
                                "mutations": {
                                    "request_mutations": [{"remove": ORIGINAL_DST_HEADER}]
                                },
                            },
                        },
                        {
                            "name": "envoy.filters.http.upstream_codec",
                            "typed_config": {
                                "@type": _T
                                + "extensions.filters.http.upstream_codec.v3.UpstreamCodec"
                            },
                        },
                    ],
                },
            },
        ],
        "local_reply_config": {
            "mappers": [
                {
                    "filter": {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {"default_value": 403, "runtime_key": "cilia.denied"},
                            }
                        }
                    },
                    "body": {"inline_string": DENIED_BODY},
                }
            ]
        },
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": _T + "extensions.access_loggers.file.v3.FileAccessLog",
                    "path": str(s.access_log),
                    "log_format": {"json_format": listener_format(lst.name)},
                },
            }
        ],
    }
    first, *more = (
        {"socket_address": {"address": host, "port_value": lst.port}}
        for host in listen_hosts(s.bind)
    )
    return {
        "@type": LISTENER_TYPE,
        "name": lst.name,
        "address": first,
        "additional_addresses": [{"address": a} for a in more],
        "transparent": s.transparent and lst.upstream is None,
        "socket_options": _keepalive_options(s.keepalive),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def route(lst: HttpListener, ipcache: Mapping[str, int]) -> Json:
    """The listener's route: everything to its upstream, guarded by the per-route RBAC."""
    rbac = {
        "@type": _T + "extensions.filters.http.rbac.v3.RBACPerRoute",
        "rbac": {
            "rules": {
                "action": "ALLOW",
                "policies": rbac_policies(lst.direction, lst.allows, ipcache),
            }
        },
    }
    return {
        "@type": ROUTE_TYPE,
        "name": lst.name,
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "route": {"cluster": _upstream_cluster(lst), "timeout": "0s"},
                        "typed_per_filter_config": {"envoy.filters.http.rbac": rbac},
                        # The datapath assigned the connection to our socket with its
                        # original destination as local address: name it to the
                        # ORIGINAL_DST cluster (a client's own value is overwritten).
                        "request_headers_to_add": [
                            {
                                "header": {
                                    "key": ORIGINAL_DST_HEADER,
                                    "value": "%DOWNSTREAM_LOCAL_ADDRESS%",
                                },
                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                            }
                        ],
                    }
                ],
            }
        ],
    }


def clusters(s: Settings, listeners: Iterable[HttpListener]) -> list[Json]:
    """The original-destination cluster plus one static cluster per plain-mode listener."""
    tcp_keepalive = {
        "tcp_keepalive": {
            "keepalive_time": s.keepalive.idle,
            "keepalive_interval": s.keepalive.interval,
            "keepalive_probes": s.keepalive.count,
        }
    }
    common = {
        "@type": CLUSTER_TYPE,
        "connect_timeout": f"{s.connect_timeout_s}s",
        "upstream_connection_options": tcp_keepalive,
    }

    def original_dst(identity: int) -> Json:
        cluster: Json = {
            **common,
            "name": f"{ORIGINAL_DST_CLUSTER}-{identity}" if identity else ORIGINAL_DST_CLUSTER,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "original_dst_lb_config": {
                "use_http_header": True,
                "http_header_name": ORIGINAL_DST_HEADER,
            },
        }
        if s.upstream_mark:
            mark = s.upstream_mark | (identity << 16)
            # One source per family: Envoy binds the one of the destination's family.
            cluster["upstream_bind_config"] = {
                "source_address": {"address": "0.0.0.0", "port_value": 0},
                "extra_source_addresses": [{"address": {"address": "::", "port_value": 0}}],
                "socket_options": [
                    {"level": 1, "name": 36, "int_value": mark, "state": "STATE_PREBIND"}
                ],  # SOL_SOCKET, SO_MARK
            }
        return cluster

    lsts = list(listeners)
    identities = sorted({lst.source_identity for lst in lsts if lst.upstream is None} - {0})
    out: list[Json] = [original_dst(0), *(original_dst(i) for i in identities)]
    for lst in lsts:
        if lst.upstream is None:
            continue
        host, port = lst.upstream
        endpoint = {
            "endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}
        }
        out.append(
            {
                **common,
                "name": _upstream_cluster(lst),
                "type": "STATIC",
                "load_assignment": {
                    "cluster_name": _upstream_cluster(lst),
                    "endpoints": [{"lb_endpoints": [endpoint]}],
                },
            }
        )
    return out


def discovery(version: str, resources: Iterable[Json]) -> Json:
    """The content of one xDS file."""
    return {"version_info": version, "resources": list(resources)}


def static_bootstrap(
    s: Settings, listeners: Iterable[HttpListener], ipcache: Mapping[str, int]
) -> Json:
    """The same configuration as one static bootstrap, for `envoy --mode validate`."""
    lsts = list(listeners)
    static_listeners = []
    for lst in lsts:
        body = listener(s, lst)
        hcm = body["filter_chains"][0]["filters"][0]["typed_config"]
        del hcm["rds"]
        hcm["route_config"] = {k: v for k, v in route(lst, ipcache).items() if k != "@type"}
        static_listeners.append({k: v for k, v in body.items() if k != "@type"})
    return {
        "admin": {"address": {"pipe": {"path": str(s.directory / "validate.sock")}}},
        "static_resources": {
            "listeners": static_listeners,
            "clusters": [{k: v for k, v in c.items() if k != "@type"} for c in clusters(s, lsts)],
        },
    }
