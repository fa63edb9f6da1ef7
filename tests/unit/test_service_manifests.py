"""Service and Endpoints validation: what a Service may say and how a bad one is refused."""

from __future__ import annotations

import pytest

from cilia.k8s.manifests import Endpoints, ManifestError, Service, parse_manifests

HEAD = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: prod}\nspec: "


def service(spec: str) -> Service:
    (svc,) = parse_manifests(HEAD + spec, "svc.yaml")
    assert isinstance(svc, Service)
    return svc


def refused(spec: str) -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifests(HEAD + spec, "svc.yaml")
    prefix = "svc.yaml: document 1 (Service prod/web): "
    message = str(info.value)
    assert message.startswith(prefix)
    return message.removeprefix(prefix)


def test_defaults() -> None:
    svc = service("{selector: {app: web}, ports: [{port: 80}]}")
    assert svc.spec.type == "ClusterIP" and svc.spec.clusterIP is None
    assert svc.spec.family == "IPv4" and not svc.spec.headless
    (port,) = svc.spec.ports
    assert (port.port_name, port.protocol, port.target, port.nodePort) == ("", "TCP", 80, None)


def test_full_nodeport_service() -> None:
    svc = service(
        "{type: NodePort, clusterIP: 'fd00:96::0010', selector: {app: web}, ports: ["
        "{name: http, port: 80, targetPort: http-alt, nodePort: 30080},"
        "{name: dns, port: 53, protocol: UDP, targetPort: 5353},"
        "{name: dns-tcp, port: 53, nodePort: 30053, protocol: TCP, targetPort: 53}]}"
    )
    assert svc.spec.clusterIP == "fd00:96::10", "kept in compressed form"
    assert svc.spec.family == "IPv6"
    assert [(p.port_name, p.target, p.nodePort) for p in svc.spec.ports] == [
        ("http", "http-alt", 30080),
        ("dns", 5353, None),
        ("dns-tcp", 53, 30053),
    ]


@pytest.mark.parametrize(
    ("spec", "family"),
    [
        ("{ipFamilies: [IPv6], ports: [{port: 80}]}", "IPv6"),
        ("{ipFamilies: [], ports: [{port: 80}]}", "IPv4"),
        ("{clusterIP: '', ports: [{port: 80}]}", "IPv4"),
        ("{clusterIP: 10.96.0.10, ipFamilies: [IPv4], ports: [{port: 80}]}", "IPv4"),
        ("{clusterIP: None, ipFamilies: [IPv6]}", "IPv6"),
    ],
)
def test_family(spec: str, family: str) -> None:
    assert service(spec).spec.family == family


def test_headless_may_have_no_ports() -> None:
    svc = service("{clusterIP: None, selector: {app: web}}")
    assert svc.spec.headless and svc.spec.ports == []


def test_empty_cluster_ip_means_unset() -> None:
    assert service("{clusterIP: '', ports: [{port: 80}]}").spec.clusterIP is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{ports: [{port: 80, protocol: SCTP}]}", "spec.ports[0].protocol: unsupported protocol"),
        ("{ports: [{port: 80, protocol: ICMP}]}", "spec.ports[0].protocol: unsupported protocol"),
        ("{ports: [{port: 80, protocol: tcp}]}", "'tcp': must be TCP or UDP"),
        ("{ports: [{port: 65536}]}", "spec.ports[0].port: must be between 1 and 65535"),
        ("{ports: [{port: '80'}]}", "spec.ports[0].port: must be an integer"),
        ("{ports: [{port: 80, targetPort: 0}]}", "spec.ports[0].targetPort: must be between 1"),
        ("{ports: [{port: 80, targetPort: 70000}]}", "spec.ports[0].targetPort: must be between"),
        ("{ports: [{port: 80, targetPort: '8080'}]}", "targetPort: invalid port name '8080'"),
        ("{ports: [{port: 80, targetPort: Http}]}", "spec.ports[0].targetPort: invalid port name"),
        ("{ports: [{port: 80, targetPort: a--b}]}", "spec.ports[0].targetPort: invalid port name"),
        ("{ports: [{port: 80, targetPort: -ab}]}", "spec.ports[0].targetPort: invalid port name"),
        (
            "{ports: [{port: 80, targetPort: abcdefghijklmnop}]}",
            "spec.ports[0].targetPort: invalid port name 'abcdefghijklmnop': at most 15",
        ),
        ("{ports: [{port: 80, targetPort: true}]}", "spec.ports[0].targetPort: must be a port"),
        ("{ports: [{port: 80, name: Web}]}", "spec.ports[0].name: invalid name 'Web'"),
        (
            "{type: LoadBalancer, ports: [{port: 80}]}",
            "spec.type: unsupported service type 'LoadBalancer' (supported: ClusterIP, NodePort)",
        ),
        ("{type: ExternalName, ports: [{port: 80}]}", "spec.type: unsupported service type"),
        (
            "{ports: [{port: 80, nodePort: 30080}]}",
            "spec.ports[0].nodePort: may only be given for a service of type NodePort",
        ),
        ("{type: NodePort, ports: [{port: 80, nodePort: 0}]}", "spec.ports[0].nodePort: must be"),
        ("{}", "spec.ports: required unless the service is headless (clusterIP None)"),
        ("{type: NodePort, ports: []}", "spec.ports: required unless the service is headless"),
        ("{clusterIP: None, type: NodePort}", "spec.clusterIP: may not be None for a NodePort"),
        ("{clusterIP: 10.96.0.300, ports: [{port: 1}]}", "spec.clusterIP: invalid IP address"),
        ("{clusterIP: none, ports: [{port: 1}]}", "spec.clusterIP: invalid IP address 'none'"),
        (
            "{ipFamilies: [IPv4, IPv6], ports: [{port: 1}]}",
            "spec.ipFamilies: dual-stack services are not supported",
        ),
        ("{ipFamilies: [IPv5], ports: [{port: 1}]}", "spec.ipFamilies[0]: unsupported IP family"),
        ("{ipFamilies: IPv4, ports: [{port: 1}]}", "spec.ipFamilies: must be a list"),
        (
            "{clusterIP: 10.96.0.1, ipFamilies: [IPv6], ports: [{port: 1}]}",
            "spec.ipFamilies: IPv6 does not match clusterIP 10.96.0.1",
        ),
        (
            "{ports: [{name: a, port: 1}, {name: a, port: 2}]}",
            "spec.ports[1].name: duplicate port name 'a'",
        ),
        (
            "{ports: [{name: a, port: 1}, {name: b, port: 1}]}",
            "spec.ports[1].port: duplicate port 1/TCP",
        ),
        (
            "{ports: [{name: a, port: 1}, {port: 2}, {port: 3}]}",
            "spec.ports[1].name: required when the service has more than one port",
        ),
        (
            "{ports: [{port: 1}, {name: b, port: 2}]}",
            "spec.ports[0].name: required when the service has more than one port",
        ),
        (
            "{type: NodePort, ports: [{name: a, port: 1, nodePort: 30001},"
            " {name: b, port: 2, nodePort: 30001}]}",
            "spec.ports[1].nodePort: duplicate nodePort 30001/TCP",
        ),
        ("{ports: [{port: 1}], clusterIPs: []}", "spec.clusterIPs: unknown field"),
    ],
)
def test_refused(spec: str, message: str) -> None:
    assert message in refused(spec)


def test_same_number_with_both_protocols() -> None:
    svc = service(
        "{type: NodePort, ports: [{name: dns, port: 53, protocol: UDP, nodePort: 30053},"
        " {name: dns-tcp, port: 53, nodePort: 30053}]}"
    )
    assert [(p.port, p.protocol) for p in svc.spec.ports] == [(53, "UDP"), (53, "TCP")]


def test_spec_is_required() -> None:
    with pytest.raises(ManifestError, match="spec: field required"):
        parse_manifests("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n", "s")


def test_endpoints_not_ready_addresses_and_target_ref() -> None:
    (ep,) = parse_manifests(
        """
apiVersion: v1
kind: Endpoints
metadata: {name: web}
subsets:
- addresses: [{ip: 10.0.0.1, targetRef: {kind: Pod, namespace: default, name: web-1}}]
  notReadyAddresses: [{ip: 'fd00::0002', nodeName: node-a}]
  ports: [{name: http, port: 8080, protocol: UDP}]
""",
        "ep.yaml",
    )
    assert isinstance(ep, Endpoints)
    (subset,) = ep.subsets
    assert subset.addresses[0].targetRef is not None
    assert subset.addresses[0].targetRef.name == "web-1"
    assert subset.notReadyAddresses[0].ip == "fd00::2", "kept in compressed form"
    assert ep.addresses == ["10.0.0.1"], "not-ready addresses are no backends"


@pytest.mark.parametrize(
    ("subsets", "message"),
    [
        ("[{notReadyAddresses: [{ip: 10.0.0}]}]", "subsets[0].notReadyAddresses[0].ip: invalid"),
        ("[{ports: [{port: 1, protocol: SCTP}]}]", "subsets[0].ports[0].protocol: unsupported"),
        ("[{addresses: [{ip: 10.0.0.1, targetRef: {uid: x}}]}]", "targetRef.uid: unknown field"),
    ],
)
def test_endpoints_refused(subsets: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifests(
            f"apiVersion: v1\nkind: Endpoints\nmetadata: {{name: e}}\nsubsets: {subsets}\n", "e"
        )
    assert message in str(info.value)
