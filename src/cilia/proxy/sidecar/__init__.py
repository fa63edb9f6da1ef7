"""Istio-compatible sidecar mode: workload certificates and their delivery to Envoy."""
