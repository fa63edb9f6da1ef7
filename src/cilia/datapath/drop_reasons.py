"""Names of the datapath's verdict codes (the reference's drop reasons)."""

from __future__ import annotations

REASONS: dict[int, str] = {
    0: "Forwarded",
    130: "Invalid source mac",
    131: "Invalid destination mac",
    132: "Invalid source ip",
    133: "Policy denied (L3)",
    134: "Invalid packet",
    135: "CT: Truncated or invalid header",
    136: "CT: Missing TCP ACK flag",
    137: "CT: Unknown L4 protocol",
    139: "Unsupported L3 protocol",
    141: "Error writing to packet",
    142: "Unknown L4 protocol",
    147: "Error retrieving tunnel key",
    150: "Unknown L3 target address",
    152: "No matching local container found",
    155: "CT: Map insertion failed",
    156: "Invalid IPv6 extension header",
    157: "IPv6 fragmentation not supported",
    158: "Service backend not found",
    159: "Policy denied (L4)",
    160: "No tunnel/encapsulation endpoint (datapath BUG!)",
    162: "Policy denied (CIDR)",
    180: "Proxy lookup failed",
    181: "L7 port reached without the proxy",
}


def reason_name(code: int) -> str:
    """Human name of a verdict code."""
    return REASONS.get(code, f"Unknown reason {code}")
