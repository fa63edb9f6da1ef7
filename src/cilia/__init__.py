"""Cilia: identity-based network security for containers, enforced in eBPF."""

__version__ = "0.1.0"
