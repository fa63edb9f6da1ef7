"""Istio's traffic capture inside a sidecar pod's network namespace, as the input of
`iptables-restore` for the IPv4 nat table (pure: the text only; the datapath applies
it in the pod's namespace).

Inbound TCP goes to the sidecar's 15006 and outbound TCP to its 15001, with Istio's
chain names; left alone: the sidecar's own traffic (UID 1337), loopback, the
sidecar's admin, agent, health and Prometheus ports, and the pod's excluded ports.
UDP, ICMP and IPv6 are not captured, as in Istio.
"""

from __future__ import annotations

from cilia.proxy.sidecar.injection import (
    INBOUND_PORT,
    NEVER_CAPTURED,
    OUTBOUND_PORT,
    SIDECAR_UID,
    SidecarSettings,
)

CHAINS = ("ISTIO_INBOUND", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT", "ISTIO_REDIRECT")


def capture_rules(settings: SidecarSettings) -> str:
    """The `iptables-restore` text of the pod's capture (the nat table, whole)."""
    inbound_skip = sorted({*NEVER_CAPTURED, *settings.exclude_inbound})
    lines = ["*nat", *(f":{chain} - [0:0]" for chain in CHAINS)]
    lines.append("-A PREROUTING -p tcp -j ISTIO_INBOUND")
    lines += [f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN" for port in inbound_skip]
    lines.append("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
    lines.append(f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND_PORT}")
    lines.append("-A OUTPUT -p tcp -j ISTIO_OUTPUT")
    lines.append(f"-A ISTIO_OUTPUT -m owner --uid-owner {SIDECAR_UID} -j RETURN")
    lines.append("-A ISTIO_OUTPUT -o lo -j RETURN")
    lines += [
        f"-A ISTIO_OUTPUT -p tcp --dport {port} -j RETURN" for port in settings.exclude_outbound
    ]
    lines.append("-A ISTIO_OUTPUT -p tcp -j ISTIO_REDIRECT")
    lines.append(f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
