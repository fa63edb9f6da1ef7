"""Kubernetes pod semantics, pure parts: probes and restartPolicy in manifests, the
backoff, restart decisions, pod phase, probe thresholds and timing."""

from __future__ import annotations

import pytest

from cilia.k8s.manifests import ManifestError, Pod, parse_manifests
from cilia.runtime.local import container_specs
from cilia.runtime.supervisor import (
    BACKOFF_MAX,
    BUILTIN_PERIOD,
    ContainerSpec,
    ContainerStatus,
    Readiness,
    pod_phase,
    probe_due,
    record_probe,
    restart_delay,
    wants_restart,
)


def _pod(container: str, spec: str = "") -> Pod:
    text = f"""
apiVersion: v1
kind: Pod
metadata: {{name: p, namespace: default}}
spec:
  {spec}
  containers:
  - {container}
"""
    (pod,) = parse_manifests(text, "pod.yaml")
    assert isinstance(pod, Pod)
    return pod


def test_probes_and_restart_policy_parse() -> None:
    pod = _pod(
        "{name: c, command: [sleep, '9'], ports: [{name: web, containerPort: 8080}],"
        " readinessProbe: {httpGet: {port: web, path: /ready}, periodSeconds: 2}}",
        "restartPolicy: OnFailure",
    )
    assert pod.spec.restartPolicy == "OnFailure"
    (spec,) = container_specs(pod)
    assert spec.readiness == Readiness("http", 8080, "/ready", period=2.0)
    assert not spec.builtin and spec.argv == ["sleep", "9"]
    (exec_spec,) = container_specs(
        _pod("{name: c, command: [sleep, '9'], readinessProbe: {exec: {command: [test, -f, x]}}}")
    )
    assert exec_spec.readiness is not None and exec_spec.readiness.command == ("test", "-f", "x")
    assert _pod("{name: c}").spec.restartPolicy == "Always"


def test_a_container_with_ports_and_no_command_is_the_builtin_responder() -> None:
    (spec,) = container_specs(_pod("{name: c, ports: [{containerPort: 80}]}"))
    assert spec.builtin and spec.tcp_ports == [80] and spec.argv == []
    assert spec.responder_key == "default/p/c"


@pytest.mark.parametrize(
    ("container", "spec", "reason"),
    [
        (
            "{name: c, readinessProbe: {tcpSocket: {port: 1}, exec: {command: [x]}}}",
            "",
            "exactly one of tcpSocket, httpGet, exec",
        ),
        ("{name: c, readinessProbe: {periodSeconds: 1}}", "", "exactly one"),
        ("{name: c, readinessProbe: {tcpSocket: {port: web}}}", "", "no container port named"),
        ("{name: c, readinessProbe: {tcpSocket: {port: 0}}}", "", "between 1 and 65535"),
        ("{name: c, readinessProbe: {exec: {command: []}}}", "", "command"),
        ("{name: c, readinessProbe: {exec: {command: [x]}, periodSeconds: 0}}", "", "period"),
        ("{name: c}", "restartPolicy: Sometimes", "restartPolicy"),
    ],
)
def test_bad_probes_and_policies_name_the_field(container: str, spec: str, reason: str) -> None:
    with pytest.raises(ManifestError, match=reason) as err:
        _pod(container, spec)
    assert "pod.yaml" in str(err.value)


def test_backoff_doubles_up_to_its_cap() -> None:
    delays = [restart_delay(n) for n in range(10)]
    assert delays[:4] == [0.0, 1.0, 2.0, 4.0]
    assert delays[-1] == BACKOFF_MAX and delays == sorted(delays)


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [
        ("Always", 0, True),
        ("Always", 3, True),
        ("OnFailure", 0, False),
        ("OnFailure", 3, True),
        ("OnFailure", None, True),
        ("Never", 3, False),
        ("Never", None, False),
    ],
)
def test_restart_decisions(policy: str, code: int | None, restart: bool) -> None:
    assert wants_restart(policy, code) is restart  # type: ignore[arg-type]


def test_pod_phase() -> None:
    done = ContainerStatus("a", state="terminated", exit_code=0)
    failed = ContainerStatus("b", state="terminated", exit_code=1)
    assert pod_phase([done, ContainerStatus("c")]) == "Running"
    assert pod_phase([done, ContainerStatus("c", state="waiting")]) == "Running"
    assert pod_phase([done]) == "Succeeded"
    assert pod_phase([done, failed]) == "Failed"


def _spec(readiness: Readiness | None) -> ContainerSpec:
    return ContainerSpec("c", ["x"], [], [], readiness=readiness)


def test_probe_thresholds() -> None:
    spec = _spec(Readiness("tcp", 80, success_threshold=2, failure_threshold=3))
    status = ContainerStatus("c")
    assert not record_probe(spec, status, True, 1.0) and not status.ready
    assert record_probe(spec, status, True, 2.0) and status.ready
    assert not record_probe(spec, status, False, 3.0) and status.ready
    assert not record_probe(spec, status, False, 4.0) and status.ready
    assert record_probe(spec, status, False, 5.0) and not status.ready
    assert not record_probe(spec, status, True, 6.0)  # one success of two


def test_probe_timing() -> None:
    spec = _spec(Readiness("tcp", 80, initial_delay=5.0, period=2.0))
    status = ContainerStatus("c", started_at=100.0)
    assert not probe_due(spec, status, 104.0)
    assert probe_due(spec, status, 105.0)
    record_probe(spec, status, False, 105.0)
    assert not probe_due(spec, status, 106.5) and probe_due(spec, status, 107.0)
    status.state = "waiting"
    assert not probe_due(spec, status, 200.0)


def test_without_a_probe_only_builtin_responders_are_rechecked() -> None:
    command = ContainerSpec("c", ["sleep", "600"], [80], [])
    status = ContainerStatus("c", started_at=100.0)
    assert probe_due(command, status, 100.0)  # not ready yet: checked once
    record_probe(command, status, True, 100.0)
    assert not probe_due(command, status, 1000.0)
    builtin = ContainerSpec("c", [], [80], [], builtin=True)
    status = ContainerStatus("c", started_at=100.0, ready=True, probed_at=100.0)
    assert not probe_due(builtin, status, 100.0 + BUILTIN_PERIOD - 0.5)
    assert probe_due(builtin, status, 100.0 + BUILTIN_PERIOD)


def test_container_status_survives_the_state_file() -> None:
    status = ContainerStatus("c", restarts=4, ready=True, exit_code=2, backoff=3)
    assert ContainerStatus.from_dict(status.to_dict()) == status
