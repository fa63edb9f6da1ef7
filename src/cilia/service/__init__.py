"""Kubernetes Services, the pure part (no I/O): Service validation lives in
`k8s.manifests`; here clusterIP and nodePort allocation (`allocate`), the endpoints
controller (`endpoints`) and the desired load-balancer table (`table`), over the
types of `model`."""
