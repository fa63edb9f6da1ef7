"""Host routing for transparent L7 redirection, in both families.

A packet the datapath assigned to a proxy socket is still addressed to its
original destination; it carries MARK_MAGIC_TO_PROXY, and a policy-routing
rule sends marked packets to a table whose only route is `local 0.0.0.0/0`
(`local ::/0` for IPv6), so the kernel delivers them to the (transparent)
proxy socket. Both families' rules and routes are installed and removed together.
"""

from __future__ import annotations

import socket

from pyroute2 import IPRoute

from cilia.datapath.layout import MARK_MAGIC_MASK, MARK_MAGIC_TO_PROXY

PROXY_TABLE = 2004
PROXY_RULE_PRIORITY = 9
LOCAL_ALL = {socket.AF_INET: "0.0.0.0/0", socket.AF_INET6: "::/0"}
"""The destination of the table's one route, per family."""


def _rule(ipr: IPRoute, command: str, family: socket.AddressFamily) -> None:
    ipr.rule(
        command,
        family=family,
        fwmark=MARK_MAGIC_TO_PROXY,
        fwmask=MARK_MAGIC_MASK,
        table=PROXY_TABLE,
        priority=PROXY_RULE_PRIORITY,
    )


def _rule_present(ipr: IPRoute, family: socket.AddressFamily) -> bool:
    for rule in ipr.get_rules(family=family):
        if (
            rule.get_attr("FRA_FWMARK") == MARK_MAGIC_TO_PROXY
            and rule.get_attr("FRA_TABLE") == PROXY_TABLE
        ):
            return True
    return False


def _route(ipr: IPRoute, command: str, family: socket.AddressFamily, oif: int) -> None:
    ipr.route(
        command,
        family=family,
        type="local",
        dst=LOCAL_ALL[family],
        oif=oif,
        table=PROXY_TABLE,
        scope=254,
    )


def ensure_proxy_routing() -> None:
    """Install the mark rules and the local routes of both families (idempotent)."""
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for family in LOCAL_ALL:
            if not _rule_present(ipr, family):
                _rule(ipr, "add", family)
            if not ipr.get_routes(family=family, table=PROXY_TABLE):
                _route(ipr, "add", family, lo)


def remove_proxy_routing() -> None:
    """Remove both families' rules and the table's routes (idempotent)."""
    with IPRoute() as ipr:
        for family in LOCAL_ALL:
            while _rule_present(ipr, family):
                _rule(ipr, "del", family)
            for route in ipr.get_routes(family=family, table=PROXY_TABLE):
                _route(ipr, "del", family, route.get_attr("RTA_OIF"))
