"""Pod placement for cluster mode (pure: no I/O).

A pod with `spec.nodeName` runs on that node; any other pod goes to the node running the
fewest pods, ties broken by node name, so placement is the same whichever agent decides.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from cilia.k8s.manifests import Pod


class PlacementError(ValueError):
    """A pod that cannot be placed; the message names the pod and the reason."""


def pinned_node(pod: Pod) -> str | None:
    """The pod's `spec.nodeName`, or None when it does not pin one."""
    return pod.spec.nodeName or None


def place(pod: Pod, nodes: Sequence[str], pods_per_node: Mapping[str, int]) -> str:
    """The node `pod` runs on: its `spec.nodeName`, else the least loaded node (then by name).

    `pods_per_node` counts the pods already placed; nodes missing from it run none.
    """
    pinned = pinned_node(pod)
    if pinned is not None:
        if pinned not in nodes:
            known = ", ".join(sorted(nodes)) or "none"
            raise PlacementError(
                f"pod/{pod.namespace}/{pod.name}: spec.nodeName {pinned!r} is not a node of "
                f"the cluster (nodes: {known})"
            )
        return pinned
    if not nodes:
        raise PlacementError(f"pod/{pod.namespace}/{pod.name}: the cluster has no node")
    return min(nodes, key=lambda node: (pods_per_node.get(node, 0), node))


def place_all(
    pods: Sequence[Pod], nodes: Sequence[str], placed: Mapping[str, str]
) -> dict[str, str]:
    """Nodes for a batch of pods (pod key -> node), counting each choice for the next.

    `placed` maps the keys of the pods already in the cluster to their nodes. A pod of the
    batch already placed on a live node stays there unless it pins another node.
    """
    batch = {pod.key for pod in pods}
    load = Counter(node for key, node in placed.items() if key not in batch)
    chosen: dict[str, str] = {}
    for pod in pods:
        current = placed.get(pod.key)
        if current is not None and current in nodes and pinned_node(pod) is None:
            node = current
        else:
            node = place(pod, nodes, load)
        chosen[pod.key] = node
        load[node] += 1
    return chosen
