"""Kubernetes-style manifests: Namespace, Pod, NetworkPolicy, CiliumNetworkPolicy,
Service and Endpoints.

`parse_manifests` validates every document before returning anything, so a bad
file is refused whole; `parse_manifest_files` does the same for the files of one
request. The text is decoded strictly (`strict_yaml`) and bounded by `InputLimits`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from cilia.k8s.strict_yaml import DEFAULT_LIMITS, load_documents
from cilia.k8s.strict_yaml import InputLimits as InputLimits
from cilia.k8s.strict_yaml import ManifestError as ManifestError
from cilia.labels import Labels, LabelSelector, pod_labels, policy_labels
from cilia.labels.syntax import dns_label_error, dns_subdomain_error
from cilia.policy.api import CIDRRule, Rule
from cilia.policy.errors import ValidationError, fail, from_pydantic


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_LABEL_NAME_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_NAME = "at most 63 characters, alphanumeric at both ends and '-', '_', '.' inside"


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:80]) + "..."


def label_key_error(key: str) -> str | None:
    """Why `key` is not a Kubernetes label key, or None: an optional prefix (a DNS-1123
    subdomain of at most 253 characters) and '/', then a name of at most 63 characters,
    alphanumeric at both ends with '-', '_' and '.' inside."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or dns_subdomain_error(prefix)):
        return (
            f"invalid label key {_shown(key)}: the prefix must be a lowercase DNS subdomain "
            "of at most 253 characters"
        )
    if len(name) > 63 or not _LABEL_NAME_RE.fullmatch(name):
        return f"invalid label key {_shown(key)}: the name must be {_LABEL_NAME}"
    return None


def label_value_error(value: str) -> str | None:
    """Why `value` is not a Kubernetes label value (empty, or like a key's name), or None."""
    if value and (len(value) > 63 or not _LABEL_NAME_RE.fullmatch(value)):
        return f"invalid label value {_shown(value)}: must be empty or {_LABEL_NAME}"
    return None


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if error := label_key_error(key):
            fail(error, key if len(key) <= 80 else "")
        if error := label_value_error(value):
            fail(error, key if len(key) <= 80 else "")
    return labels


class ObjectMeta(_Model):
    """The metadata Cilia uses (other metadata fields are refused)."""

    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if error := dns_subdomain_error(value):
            fail(error)
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if error := dns_label_error(value):
            fail(error)
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)


class _Object(_Model):
    metadata: ObjectMeta

    @property
    def name(self) -> str:
        """metadata.name"""
        return self.metadata.name

    @property
    def namespace(self) -> str:
        """metadata.namespace ("" for cluster-scoped kinds)."""
        return self.metadata.namespace

    @property
    def key(self) -> str:
        """`kind/namespace/name`, unique per object."""
        return f"{getattr(self, 'kind', '')}/{self.namespace}/{self.name}"

    @property
    def display(self) -> str:
        """`Kind namespace/name` (`Kind name` for cluster-scoped kinds), as in messages."""
        kind = getattr(self, "kind", "")
        return f"{kind} {self.namespace}/{self.name}" if self.namespace else f"{kind} {self.name}"


class _PolicyObject(_Object):
    @property
    def owner_labels(self) -> Labels:
        """The labels every rule derived from this object carries (for repository.replace)."""
        return policy_labels(self.name, self.namespace, getattr(self, "kind", ""))


class Namespace(_Object):
    """A namespace; its labels become `io.cilium.k8s.namespace.labels.*` pod labels."""

    apiVersion: Literal["v1"]
    kind: Literal["Namespace"]

    @field_validator("metadata")
    @classmethod
    def _dns_label(cls, value: ObjectMeta) -> ObjectMeta:
        if error := dns_label_error(value.name):
            fail(error, "name")
        return value

    @property
    def namespace(self) -> str:
        """Namespaces are cluster-scoped: always ""."""
        return ""


def _port_in_range(value: int) -> int:
    if not 1 <= value <= 65535:
        fail("must be between 1 and 65535")
    return value


Port = Annotated[int, Field(strict=True), AfterValidator(_port_in_range)]


class ContainerPort(_Model):
    """A port a container listens on."""

    containerPort: Port
    protocol: Literal["TCP", "UDP"] = "TCP"
    name: str | None = None

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: object) -> object:
        if value not in ("TCP", "UDP"):
            fail(f"unsupported protocol {value!r}: must be TCP or UDP")
        return value


ProbePort = Annotated[int, Field(strict=True), AfterValidator(_port_in_range)] | str
"""A probe's port: a number, or the name of one of the container's ports."""


class TCPSocketAction(_Model):
    """Ready when a TCP connection to the port opens."""

    port: ProbePort


class HTTPGetAction(_Model):
    """Ready when GET `path` on the port answers 200-399."""

    port: ProbePort
    path: str = "/"
    scheme: Literal["HTTP"] = "HTTP"


class ExecAction(_Model):
    """Ready when the command, run in the pod, exits 0."""

    command: list[str] = Field(min_length=1)


class Probe(_Model):
    """A readinessProbe: one handler and Kubernetes' timing fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    tcpSocket: TCPSocketAction | None = None
    httpGet: HTTPGetAction | None = None
    exec_: ExecAction | None = Field(None, alias="exec")
    initialDelaySeconds: int = Field(0, ge=0)
    periodSeconds: int = Field(10, ge=1)
    timeoutSeconds: int = Field(1, ge=1)
    successThreshold: int = Field(1, ge=1)
    failureThreshold: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _one_handler(self) -> Probe:
        given = [n for n in ("tcpSocket", "httpGet", "exec_") if getattr(self, n) is not None]
        if len(given) != 1:
            fail("give exactly one of tcpSocket, httpGet, exec")
        return self


class Container(_Model):
    """A container: `command`/`args` run in the pod; `image` and `env` are accepted and
    ignored. `ports` are informational, as in Kubernetes; `readinessProbe` says when the
    container is ready (without one: once its process runs)."""

    name: str
    image: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    ports: list[ContainerPort] = Field(default_factory=list)
    env: list[dict[str, Any]] | None = None
    readinessProbe: Probe | None = None

    @model_validator(mode="after")
    def _probe_port_named(self) -> Container:
        probe = self.readinessProbe
        action = (probe.tcpSocket or probe.httpGet) if probe else None
        port = action.port if action else None
        if isinstance(port, str) and port not in {p.name for p in self.ports}:
            fail(f"no container port named {port!r}", "readinessProbe.port")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if error := dns_label_error(value):
            fail(error)
        return value


class PodSpec(_Model):
    """The parts of a pod spec Cilia runs."""

    containers: list[Container] = Field(min_length=1)
    restartPolicy: Literal["Always", "OnFailure", "Never"] = "Always"
    serviceAccountName: str | None = None
    nodeName: str | None = Field(
        None, description="the node the pod runs on (cluster mode); unset: the scheduler picks"
    )

    @field_validator("containers")
    @classmethod
    def _unique(cls, value: list[Container]) -> list[Container]:
        seen: set[str] = set()
        for index, container in enumerate(value):
            if container.name in seen:
                fail(f"duplicate container name {container.name!r}", f"[{index}].name")
            seen.add(container.name)
        return value


class Pod(_Object):
    """A local pod."""

    apiVersion: Literal["v1"]
    kind: Literal["Pod"]
    spec: PodSpec

    def identity_labels(self, namespace_labels: Mapping[str, str]) -> Labels:
        """The pod's security identity labels, given its namespace's labels."""
        return pod_labels(
            self.metadata.labels, self.namespace, namespace_labels, self.spec.serviceAccountName
        )


def _plain_keys(selector: LabelSelector | None) -> LabelSelector | None:
    """Kubernetes selectors take plain keys: refuse Cilium's `source:` prefixes."""
    if selector is None:
        return None
    data = selector.to_dict()
    for key in data.get("matchLabels", {}):
        if ":" in key:
            fail(f"invalid label key {key!r}", f"matchLabels.{key}")
    for index, expr in enumerate(data.get("matchExpressions", [])):
        if ":" in expr["key"]:
            fail(f"invalid label key {expr['key']!r}", f"matchExpressions[{index}].key")
    return selector


class NetworkPolicyPeer(_Model):
    """A `from`/`to` item: pod and/or namespace selector (AND), or an ipBlock."""

    podSelector: LabelSelector | None = None
    namespaceSelector: LabelSelector | None = None
    ipBlock: CIDRRule | None = None

    _keys = field_validator("podSelector", "namespaceSelector")(_plain_keys)

    @model_validator(mode="after")
    def _check(self) -> NetworkPolicyPeer:
        selectors = self.podSelector is not None or self.namespaceSelector is not None
        if self.ipBlock is not None and selectors:
            fail("may not specify both ipBlock and another peer")
        if self.ipBlock is None and not selectors:
            fail("must specify a podSelector, namespaceSelector or ipBlock")
        return self


class NetworkPolicyPort(_Model):
    """A port (number only; named ports are not supported) and protocol (default TCP)."""

    protocol: Literal["TCP", "UDP"] | None = None
    port: int | str | None = None

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: object) -> object:
        if value is not None and value not in ("TCP", "UDP"):
            fail(f"unsupported protocol {value!r}: must be TCP or UDP")
        return value

    @field_validator("port")
    @classmethod
    def _port(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, str):
            fail(f"named port {value!r} is not supported")
        if value is not None and not 1 <= value <= 65535:
            fail("must be between 1 and 65535")
        return value


class NetworkPolicyIngressRule(_Model):
    """Allowed sources (`from`) on `ports`; an empty/absent list means all."""

    from_: list[NetworkPolicyPeer] | None = Field(default=None, alias="from")
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicyEgressRule(_Model):
    """Allowed destinations (`to`) on `ports`; an empty/absent list means all."""

    to: list[NetworkPolicyPeer] | None = None
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicySpec(_Model):
    """networking.k8s.io/v1 NetworkPolicySpec."""

    podSelector: LabelSelector
    ingress: list[NetworkPolicyIngressRule] | None = None
    egress: list[NetworkPolicyEgressRule] | None = None
    policyTypes: list[Literal["Ingress", "Egress"]] | None = None

    _keys = field_validator("podSelector")(_plain_keys)

    def effective_policy_types(self) -> list[str]:
        """policyTypes, defaulting to Ingress plus Egress when there are egress rules."""
        if self.policyTypes:
            return list(self.policyTypes)
        return ["Ingress", "Egress"] if self.egress else ["Ingress"]


class NetworkPolicy(_PolicyObject):
    """A Kubernetes NetworkPolicy."""

    apiVersion: Literal["networking.k8s.io/v1"]
    kind: Literal["NetworkPolicy"]
    spec: NetworkPolicySpec

    def rules(self) -> list[Rule]:
        """The translated rule (see `policy_translation.rules_from_network_policy`)."""
        from cilia.k8s.policy_translation import rules_from_network_policy

        return rules_from_network_policy(self)


class CiliumNetworkPolicy(_PolicyObject):
    """A CiliumNetworkPolicy with `spec` and/or `specs`; `status` is ignored on input."""

    apiVersion: Literal["cilium.io/v2"]
    kind: Literal["CiliumNetworkPolicy"]
    spec: Rule | None = None
    specs: list[Rule] | None = None
    status: Any = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _check(self) -> CiliumNetworkPolicy:
        if self.spec is None and not self.specs:
            fail("Invalid CiliumNetworkPolicy spec(s): empty policy", "spec")
        return self

    @property
    def raw_rules(self) -> list[Rule]:
        """`spec` followed by `specs`, as written (not namespace-scoped)."""
        return ([self.spec] if self.spec else []) + list(self.specs or [])

    def rules(self) -> list[Rule]:
        """The namespace-scoped, labelled rules (see `policy_translation.rules_from_cnp`)."""
        from cilia.k8s.policy_translation import rules_from_cnp

        return rules_from_cnp(self)


def _tcp_or_udp(value: object) -> object:
    """Refuse any protocol but TCP and UDP, naming the allowed values."""
    if value not in ("TCP", "UDP"):
        fail(f"unsupported protocol {value!r}: must be TCP or UDP")
    return value


_SVC_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _target_port(value: object) -> object:
    """A port number, or an IANA_SVC_NAME: a container port's name."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _port_in_range(value)
    if not isinstance(value, str):
        fail("must be a port number or a port name")
    if (
        len(value) > 15
        or not _SVC_NAME_RE.fullmatch(value)
        or "--" in value
        or not any(c.isalpha() for c in value)
    ):
        fail(
            f"invalid port name {_shown(value)}: at most 15 lowercase letters, digits and "
            "'-' (not at either end, not twice in a row), with at least one letter"
        )
    return value


class ServicePort(_Model):
    """A port of a Service: `port` on the clusterIP (and `nodePort` on every node of a
    NodePort service) leads to `targetPort` (a number or a container port's name;
    default `port`) of the backends."""

    name: str | None = None
    port: Port
    protocol: Literal["TCP", "UDP"] = "TCP"
    targetPort: int | str | None = None
    nodePort: Port | None = None

    _protocol = field_validator("protocol", mode="before")(_tcp_or_udp)
    _target = field_validator("targetPort", mode="before")(_target_port)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value and (error := dns_label_error(value)):
            fail(error)
        return value

    @property
    def port_name(self) -> str:
        """The name, "" for an unnamed port."""
        return self.name or ""

    @property
    def target(self) -> int | str:
        """targetPort, defaulting to `port`."""
        return self.port if self.targetPort is None else self.targetPort


IPFamily = Literal["IPv4", "IPv6"]


def _ip_family(address: str) -> IPFamily:
    return "IPv6" if ":" in address else "IPv4"


def _duplicates(ports: Sequence[ServicePort]) -> None:
    """Refuse two ports with the same name, the same port or the same nodePort (per
    protocol), and unnamed ports of a service with several."""
    names: set[str] = set()
    numbers: set[tuple[int, str]] = set()
    node_ports: set[tuple[int, str]] = set()
    for index, port in enumerate(ports):
        if not port.name and len(ports) > 1:
            fail("required when the service has more than one port", f"ports[{index}].name")
        if port.port_name in names:
            fail(f"duplicate port name {port.port_name!r}", f"ports[{index}].name")
        if (port.port, port.protocol) in numbers:
            fail(f"duplicate port {port.port}/{port.protocol}", f"ports[{index}].port")
        if (port.nodePort, port.protocol) in node_ports:
            fail(f"duplicate nodePort {port.nodePort}/{port.protocol}", f"ports[{index}].nodePort")
        names.add(port.port_name)
        numbers.add((port.port, port.protocol))
        if port.nodePort is not None:
            node_ports.add((port.nodePort, port.protocol))


class ServiceSpec(_Model):
    """What a Service load-balances: `ports` of its `clusterIP` (an address, "None" for a
    headless service, unset: allocated) to the pods `selector` picks (none: the
    addresses of its Endpoints object), of one IP family."""

    selector: dict[str, str] | None = None
    ports: list[ServicePort] = Field(default_factory=list)
    type: Literal["ClusterIP", "NodePort"] = "ClusterIP"
    clusterIP: str | None = None
    ipFamilies: list[IPFamily] | None = None

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else _check_labels(value)

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: object) -> object:
        if value not in ("ClusterIP", "NodePort"):
            fail(f"unsupported service type {value!r} (supported: ClusterIP, NodePort)")
        return value

    @field_validator("clusterIP")
    @classmethod
    def _cluster_ip(cls, value: str | None) -> str | None:
        if not value:
            return None
        if value == "None":
            return value
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            fail(f"invalid IP address {_shown(value)}: must be an address or None")

    @field_validator("ipFamilies", mode="before")
    @classmethod
    def _families(cls, value: object) -> object:
        if isinstance(value, list):
            if len(value) > 1:
                fail("dual-stack services are not supported: give one of IPv4, IPv6")
            if value and value[0] not in ("IPv4", "IPv6"):
                fail(f"unsupported IP family {value[0]!r}: must be IPv4 or IPv6", "[0]")
        return None if value == [] else value

    @model_validator(mode="after")
    def _check(self) -> ServiceSpec:
        headless = self.clusterIP == "None"
        if headless and self.type == "NodePort":
            fail("may not be None for a NodePort service", "clusterIP")
        ip = self.clusterIP
        if self.ipFamilies and ip and not headless and _ip_family(ip) != self.ipFamilies[0]:
            fail(f"{self.ipFamilies[0]} does not match clusterIP {ip}", "ipFamilies")
        if not self.ports and not headless:
            fail("required unless the service is headless (clusterIP None)", "ports")
        for index, port in enumerate(self.ports):
            if port.nodePort is not None and self.type != "NodePort":
                fail("may only be given for a service of type NodePort", f"ports[{index}].nodePort")
        _duplicates(self.ports)
        return self

    @property
    def headless(self) -> bool:
        """clusterIP None: no load balancing."""
        return self.clusterIP == "None"

    @property
    def family(self) -> IPFamily:
        """The service's IP family: ipFamilies, else the clusterIP's, else IPv4."""
        if self.ipFamilies:
            return self.ipFamilies[0]
        if self.clusterIP and not self.headless:
            return _ip_family(self.clusterIP)
        return "IPv4"


class Service(_Object):
    """A Service. One without `selector` names backends of its own (an Endpoints object
    of the same name): what CiliumNetworkPolicy `toServices` allows."""

    apiVersion: Literal["v1"]
    kind: Literal["Service"]
    spec: ServiceSpec


class ObjectReference(_Model):
    """What an endpoint address stands for (a Pod), for display."""

    kind: str | None = None
    namespace: str | None = None
    name: str | None = None


class EndpointAddress(_Model):
    """A backend address (kept in ipaddress' compressed form)."""

    ip: str
    hostname: str | None = None
    nodeName: str | None = None
    targetRef: ObjectReference | None = None

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            fail(f"invalid IP address {value!r}")


class EndpointPort(_Model):
    name: str | None = None
    port: Port
    protocol: Literal["TCP", "UDP"] = "TCP"

    _protocol = field_validator("protocol", mode="before")(_tcp_or_udp)


class EndpointSubset(_Model):
    """Addresses that serve the same ports; `notReadyAddresses` get no traffic."""

    addresses: list[EndpointAddress] = Field(default_factory=list)
    notReadyAddresses: list[EndpointAddress] = Field(default_factory=list)
    ports: list[EndpointPort] = Field(default_factory=list)


class Endpoints(_Object):
    """The backend addresses of the Service with the same name."""

    apiVersion: Literal["v1"]
    kind: Literal["Endpoints"]
    subsets: list[EndpointSubset] = Field(default_factory=list)

    @property
    def addresses(self) -> list[str]:
        """Every ready backend address, in order, without repeats."""
        return list(dict.fromkeys(a.ip for s in self.subsets for a in s.addresses))


Manifest = Namespace | Pod | NetworkPolicy | CiliumNetworkPolicy | Service | Endpoints


class ObjectConflict(ValueError):
    """An update a store of objects refuses (a pod's containers changing, a concurrent
    change of the same object in the cluster store)."""


def display(obj: Manifest) -> str:
    """kubectl-style name: `pod/default/web`, `namespace/prod`."""
    if isinstance(obj, Namespace):
        return f"namespace/{obj.name}"
    return f"{obj.kind.lower()}/{obj.namespace}/{obj.name}"


def dump(obj: Manifest) -> dict[str, Any]:
    """The object as a plain dict (what `cilia get -o yaml` shows)."""
    return obj.model_dump(mode="json", by_alias=True, exclude_none=True)


KINDS: dict[str, tuple[str, type[Manifest]]] = {
    "Namespace": ("v1", Namespace),
    "Pod": ("v1", Pod),
    "NetworkPolicy": ("networking.k8s.io/v1", NetworkPolicy),
    "CiliumNetworkPolicy": ("cilium.io/v2", CiliumNetworkPolicy),
    "Service": ("v1", Service),
    "Endpoints": ("v1", Endpoints),
}


def describe(doc: Mapping[str, Any]) -> str:
    """`Kind namespace/name` of a document not parsed yet (as far as it says)."""
    kind = doc.get("kind")
    meta = doc.get("metadata")
    if not isinstance(kind, str):
        return ""
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        return kind
    if kind == "Namespace":
        return f"{kind} {meta['name']}"
    namespace = meta.get("namespace") or "default"
    return f"{kind} {namespace}/{meta['name']}"


def parse_manifest(doc: object) -> Manifest:
    """Validate one decoded document; raises ValidationError naming the field."""
    if not isinstance(doc, Mapping):
        raise ValidationError("", "document must be an object")
    kind = doc.get("kind")
    if kind is None:
        raise ValidationError("kind", "field required")
    if kind not in KINDS:
        raise ValidationError("kind", f"unsupported kind {kind!r} (supported: {', '.join(KINDS)})")
    api_version, model = KINDS[kind]
    if doc.get("apiVersion") != api_version:
        raise ValidationError("apiVersion", f"must be {api_version!r} for {kind}")
    try:
        return model.model_validate(doc)
    except pydantic.ValidationError as err:
        raise from_pydantic(err) from None


def _check_counts(doc: Mapping[str, Any], limits: InputLimits) -> None:
    """Refuse oversized label maps and rule lists before validating their contents."""
    meta = doc.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    if isinstance(labels, Mapping) and len(labels) > limits.max_labels:
        raise ValidationError(
            "metadata.labels",
            f"more than {limits.max_labels} labels (limit max_labels_per_object)",
        )
    spec = doc.get("spec")
    selector = spec.get("selector") if isinstance(spec, Mapping) else None
    if (
        doc.get("kind") == "Service"
        and isinstance(selector, Mapping)
        and (len(selector) > limits.max_labels)
    ):
        raise ValidationError(
            "spec.selector",
            f"more than {limits.max_labels} labels (limit max_labels_per_object)",
        )
    if doc.get("kind") == "CiliumNetworkPolicy":
        specs = doc.get("specs")
        rules = (1 if isinstance(spec, Mapping) else 0) + (
            len(specs) if isinstance(specs, list) else 0
        )
        if rules > limits.max_rules:
            raise ValidationError(
                "specs", f"more than {limits.max_rules} rules (limit max_rules_per_policy)"
            )


def parse_manifests(
    text: bytes | str, source: str, limits: InputLimits = DEFAULT_LIMITS
) -> list[Manifest]:
    """Parse and validate multi-document YAML (or JSON); raises ManifestError on the first
    problem, naming `source`, the document, the object and the field."""
    return parse_manifest_files([(source, text)], limits)


def parse_manifest_files(
    files: Sequence[tuple[str, bytes | str]], limits: InputLimits = DEFAULT_LIMITS
) -> list[Manifest]:
    """Every object of several (source, text) files, all validated before any is returned:
    at most `limits.max_objects` in all, and no object defined twice."""
    out: list[Manifest] = []
    seen: dict[str, tuple[str, int]] = {}
    for source, text in files:
        docs = load_documents(text, source, limits.max_depth, limits.max_objects, len(out))
        for number, doc in enumerate(docs, start=1):
            if doc is None:
                continue
            obj = describe(doc) if isinstance(doc, Mapping) else ""
            try:
                if isinstance(doc, Mapping):
                    _check_counts(doc, limits)
                manifest = parse_manifest(doc)
            except ValidationError as err:
                raise ManifestError(source, err.reason, number, obj, err.path) from None
            if manifest.key in seen:
                first_source, first = seen[manifest.key]
                where = "" if first_source == source else f"{first_source} "
                raise ManifestError(source, f"duplicate of {where}document {first}", number, obj)
            seen[manifest.key] = (source, number)
            out.append(manifest)
    return out
