"""Host routing for transparent L7 redirection.

A packet the datapath assigned to a proxy socket is still addressed to its
original destination; it carries MARK_MAGIC_TO_PROXY, and a policy-routing
rule sends marked packets to a table whose only route is `local 0.0.0.0/0`,
so the kernel delivers them to the (IP_TRANSPARENT) proxy socket.
"""

from __future__ import annotations

from pyroute2 import IPRoute

from cilia.datapath.layout import MARK_MAGIC_MASK, MARK_MAGIC_TO_PROXY

PROXY_TABLE = 2004
PROXY_RULE_PRIORITY = 9


def _rule_present(ipr: IPRoute) -> bool:
    for rule in ipr.get_rules(family=2):
        if (
            rule.get_attr("FRA_FWMARK") == MARK_MAGIC_TO_PROXY
            and rule.get_attr("FRA_TABLE") == PROXY_TABLE
        ):
            return True
    return False


def ensure_proxy_routing() -> None:
    """Install the mark rule and the local route (idempotent)."""
    with IPRoute() as ipr:
        if not _rule_present(ipr):
            ipr.rule(
                "add",
                family=2,
                fwmark=MARK_MAGIC_TO_PROXY,
                fwmask=MARK_MAGIC_MASK,
                table=PROXY_TABLE,
                priority=PROXY_RULE_PRIORITY,
            )
        lo = ipr.link_lookup(ifname="lo")[0]
        if not ipr.get_routes(family=2, table=PROXY_TABLE):
            ipr.route("add", type="local", dst="0.0.0.0/0", oif=lo, table=PROXY_TABLE, scope=254)


def remove_proxy_routing() -> None:
    """Remove the rule and the table's route (idempotent)."""
    with IPRoute() as ipr:
        while _rule_present(ipr):
            ipr.rule(
                "del",
                family=2,
                fwmark=MARK_MAGIC_TO_PROXY,
                fwmask=MARK_MAGIC_MASK,
                table=PROXY_TABLE,
                priority=PROXY_RULE_PRIORITY,
            )
        for route in ipr.get_routes(family=2, table=PROXY_TABLE):
            ipr.route(
                "del",
                type="local",
                dst="0.0.0.0/0",
                oif=route.get_attr("RTA_OIF"),
                table=PROXY_TABLE,
                scope=254,
            )
