"""A whole cluster on one machine: etcd, node namespaces joined by an underlay, and one
unmodified agent per node (`cilia cluster up|down|status`). Only this package knows
that layout; the agents run the production code path."""
