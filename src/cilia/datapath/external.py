"""An "outside" for a node: a network namespace routed through the host (the internet).

The namespace gets `outside_ip/30` on `eth0`, a default route via the host side
(`host_ip/30` on `host_ifname`, with forwarding on), so pods reach it through the
host and it reaches pods through the host. With `outside_ip6` and `host_ip6` it is
dual stack: the pair's IPv6 /126 (no duplicate address detection) and a default
IPv6 route via the host side, whose IPv6 forwarding is node-wide (the agent's, when
it has IPv6). Optionally its traffic to a range is SNATed to the host side address
on the way in (as a node masquerading outside traffic would), with an iptables rule
carrying `comment`. With `router_netns` the host side lives in that namespace (a
node of a cluster on one machine) instead of the caller's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass

from cilia.datapath.netns import create_netns, delete_netns, netns_path, setns
from cilia.datapath.pod_network import set_interface_sysctl

PREFIX_LEN = {4: 30, 6: 126}
"""Prefix length of the pair's network, by family."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Outside:
    """An external namespace joined to the host by a veth pair."""

    netns: str
    host_ifname: str
    host_ip: str
    outside_ip: str
    router_netns: str | None = None
    host_ip6: str | None = None
    outside_ip6: str | None = None

    @property
    def path(self) -> str:
        """Path of the namespace (for probes and processes inside it)."""
        return netns_path(self.netns)

    def address(self, family: int) -> str | None:
        """The outside's address of a family (None: it has none)."""
        return self.outside_ip if family == 4 else self.outside_ip6

    def network(self, family: int) -> str | None:
        """The pair's network of a family, as a CIDR (None: no address of it)."""
        ip = self.address(family)
        if ip is None:
            return None
        return str(ipaddress.ip_interface(f"{ip}/{PREFIX_LEN[family]}").network)

    def _host(self, *args: str) -> list[str]:
        """An `ip` command line for the host side's namespace."""
        return ["-n", self.router_netns, *args] if self.router_netns else list(args)

    @contextlib.contextmanager
    def _in_router(self) -> Iterator[None]:
        if self.router_netns is None:
            yield
            return
        with setns(netns_path(self.router_netns)):
            yield

    def create(self) -> None:
        """Create the namespace, the veth pair, addresses and routes (removed on failure)."""
        try:
            create_netns(self.netns)
            _ip(
                *self._host(
                    "link",
                    "add",
                    self.host_ifname,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    self.netns,
                )
            )
            pairs = [(self.host_ip, self.outside_ip, 4)]
            if self.host_ip6 and self.outside_ip6:
                pairs.append((self.host_ip6, self.outside_ip6, 6))
            for host_ip, outside_ip, family in pairs:
                size = PREFIX_LEN[family]
                nodad = ["nodad"] if family == 6 else []
                _ip(
                    *self._host("addr", "add", f"{host_ip}/{size}", "dev", self.host_ifname, *nodad)
                )
                _ip("-n", self.netns, "addr", "add", f"{outside_ip}/{size}", "dev", "eth0", *nodad)
            _ip(*self._host("link", "set", self.host_ifname, "up"))
            with self._in_router():
                set_interface_sysctl(self.host_ifname, "forwarding", "1")
            _ip("-n", self.netns, "link", "set", "eth0", "up")
            _ip("-n", self.netns, "link", "set", "lo", "up")
            for host_ip, _, family in pairs:
                _ip("-n", self.netns, f"-{family}", "route", "add", "default", "via", host_ip)
        except BaseException:
            self.remove()
            raise

    def _snat_rule(self, destination: str, comment: str) -> list[str]:
        return [
            "POSTROUTING",
            "-t",
            "nat",
            "-s",
            self.outside_ip,
            "-d",
            destination,
            "-m",
            "comment",
            "--comment",
            comment,
            "-j",
            "SNAT",
            "--to-source",
            self.host_ip,
        ]

    def snat(self, destination: str, comment: str, on: bool) -> None:
        """Add (or remove) the rule SNATing this outside's traffic to `destination`."""
        rule = self._snat_rule(destination, comment)
        iptables = ["ip", "netns", "exec", self.router_netns] if self.router_netns else []
        iptables.append("iptables")
        exists = subprocess.run([*iptables, "-C", *rule], capture_output=True).returncode == 0
        if on and not exists:
            subprocess.run([*iptables, "-A", *rule], check=True, capture_output=True)
        elif not on and exists:
            subprocess.run([*iptables, "-D", *rule], check=True, capture_output=True)

    def remove(self) -> None:
        """Remove the veth pair and the namespace (idempotent)."""
        with suppress(subprocess.CalledProcessError):
            _ip(*self._host("link", "del", self.host_ifname))
        delete_netns(self.netns)
