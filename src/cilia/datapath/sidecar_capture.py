"""Istio-style traffic capture in a pod's network namespace: the nat table's rules
(made by `proxy/sidecar/capture.py`) loaded with `iptables-restore`, inside that
namespace only, all at once (a restore is one transaction: no half-loaded capture)."""

from __future__ import annotations

import subprocess

from cilia.proxy.sidecar.capture import CHAINS


class CaptureError(RuntimeError):
    """iptables refused the capture rules; the message carries its reason."""


def _in_netns(netns: str, argv: list[str], text: str = "") -> None:
    proc = subprocess.run(
        ["nsenter", f"--net={netns}", *argv], input=text, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise CaptureError(f"{argv[0]} in {netns}: {proc.stderr.strip() or proc.returncode}")


def install_capture(netns: str, rules: str) -> None:
    """Replace the nat table of the namespace at `netns` with `rules`."""
    _in_netns(netns, ["iptables-restore", "-w"], rules)


def remove_capture(netns: str) -> None:
    """Empty the namespace's nat table and drop the capture chains (idempotent)."""
    empty = ["*nat", *(f":{chain} - [0:0]" for chain in CHAINS), "COMMIT", ""]
    _in_netns(netns, ["iptables-restore", "-w"], "\n".join(empty))
    for chain in CHAINS:
        _in_netns(netns, ["iptables", "-w", "-t", "nat", "-X", chain])
