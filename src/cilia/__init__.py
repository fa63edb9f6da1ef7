"""Cilia: identity-based network security for containers, enforced in eBPF."""
