"""Which pods get a sidecar, with which settings, and the capture rules they get."""

from __future__ import annotations

from typing import Any

import pytest

from cilia.k8s.manifests import Pod, parse_manifest
from cilia.proxy.sidecar.capture import capture_rules
from cilia.proxy.sidecar.injection import (
    EXCLUDE_INBOUND,
    EXCLUDE_OUTBOUND,
    INJECT,
    MTLS_MODE,
    SIDECAR_LABEL,
    InjectionError,
    sidecar_settings,
    wants_sidecar,
)


def pod(annotations: dict[str, str] | None = None, **spec: Any) -> Pod:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "labels": {"app": "store", "version": "v2"},
            "annotations": annotations or {},
        },
        "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}], **spec},
    }
    parsed = parse_manifest(doc)
    assert isinstance(parsed, Pod)
    return parsed


ON = {INJECT: "true"}


@pytest.mark.parametrize(
    ("annotations", "namespace_labels", "expected"),
    [
        ({}, {}, False),
        (ON, {}, True),
        ({}, {"istio-injection": "enabled"}, True),
        ({INJECT: "false"}, {"istio-injection": "enabled"}, False),
        ({}, {"istio-injection": "disabled"}, False),
    ],
)
def test_the_annotation_decides_else_the_namespace_label(
    annotations: dict[str, str], namespace_labels: dict[str, str], expected: bool
) -> None:
    assert wants_sidecar(pod(annotations), namespace_labels) is expected


def test_settings_of_an_injected_pod() -> None:
    notes = {**ON, EXCLUDE_OUTBOUND: "5432, 6379", EXCLUDE_INBOUND: "9000"}
    s = sidecar_settings(pod(notes, serviceAccountName="store-sa"), {}, {MTLS_MODE: "STRICT"})
    assert s is not None
    assert (s.service_account, s.mtls) == ("store-sa", "STRICT")
    assert (s.exclude_outbound, s.exclude_inbound) == ((5432, 6379), (9000,))
    assert s.labels == {
        SIDECAR_LABEL: "true",
        "security.istio.io/tlsMode": "istio",
        "service.istio.io/canonical-name": "store",
        "service.istio.io/canonical-revision": "v2",
    }


def test_defaults_service_account_default_and_permissive() -> None:
    s = sidecar_settings(pod(ON), {}, {})
    assert s is not None and (s.service_account, s.mtls) == ("default", "PERMISSIVE")
    assert sidecar_settings(pod(), {}, {}) is None, "no sidecar, no settings"


@pytest.mark.parametrize(
    ("annotations", "namespace_annotations", "field", "reason"),
    [
        ({INJECT: "yes"}, {}, f"metadata.annotations[{INJECT}]", "must be true or false"),
        (
            {**ON, EXCLUDE_OUTBOUND: "80,http"},
            {},
            f"metadata.annotations[{EXCLUDE_OUTBOUND}]",
            "'http' is not a port",
        ),
        (
            {**ON, EXCLUDE_INBOUND: "70000"},
            {},
            f"metadata.annotations[{EXCLUDE_INBOUND}]",
            "'70000' is not a port",
        ),
        (ON, {MTLS_MODE: "strict"}, f"metadata.annotations[{MTLS_MODE}]", "unknown mTLS mode"),
    ],
)
def test_malformed_settings_are_refused_naming_the_pod_and_field(
    annotations: dict[str, str], namespace_annotations: dict[str, str], field: str, reason: str
) -> None:
    with pytest.raises(InjectionError) as err:
        sidecar_settings(pod(annotations), {}, namespace_annotations)
    assert str(err.value).startswith("pod shop/web: ")
    assert field in str(err.value) and reason in str(err.value)


def test_a_container_port_of_the_sidecar_is_refused() -> None:
    containers = [{"name": "c", "ports": [{"containerPort": 80}, {"containerPort": 15001}]}]
    with pytest.raises(InjectionError, match=r"spec.containers\[0\].ports\[1\].containerPort"):
        sidecar_settings(pod(ON, containers=containers), {}, {})
    assert sidecar_settings(pod(containers=containers), {}, {}) is None, "no sidecar: fine"


def test_capture_rules_follow_istio() -> None:
    notes = {**ON, EXCLUDE_OUTBOUND: "5432", EXCLUDE_INBOUND: "9000"}
    settings = sidecar_settings(pod(notes), {}, {})
    assert settings is not None
    rules = capture_rules(settings).splitlines()
    assert rules[0] == "*nat" and rules[-1] == "COMMIT"
    inbound = [r for r in rules if r.startswith("-A ISTIO_INBOUND")]
    assert inbound[-1] == "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"
    skipped = {int(r.split("--dport ")[1].split()[0]) for r in inbound[:-1]}
    assert skipped == {15000, 15020, 15021, 15090, 9000}
    assert "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in rules
    output = [r for r in rules if r.startswith("-A ISTIO_OUTPUT")]
    assert output[0] == "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"
    assert "-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN" in output
    assert output[-1] == "-A ISTIO_OUTPUT -p tcp -j ISTIO_REDIRECT"
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in rules
    assert not [r for r in rules if "udp" in r or "icmp" in r], "only TCP is captured"
