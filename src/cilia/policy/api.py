"""The cilium.io/v2 rule: pydantic models mirroring the Cilium API field names."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, field_validator, model_validator

from cilia.labels import Labels, LabelSelector
from cilia.policy.errors import fail
from cilia.policy.l7 import ApiModel, L7Rules

MAX_PORTS = 40
ENTITIES = ("all", "world", "cluster", "host", "init")
ProtocolName = Literal["TCP", "UDP", "ANY"]


def _check_cidr(value: object) -> str:
    if not isinstance(value, str):
        fail("must be a string")
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        fail(f"invalid CIDR {value!r}")
    return value


def _check_entity(value: object) -> str:
    if value not in ENTITIES:
        fail(f"unknown entity {value!r} (valid: {', '.join(ENTITIES)})")
    return str(value)


CIDR = Annotated[str, BeforeValidator(_check_cidr)]
Entity = Annotated[str, BeforeValidator(_check_entity)]


class PortProtocol(ApiModel):
    """An L4 port: a non-zero 16-bit number (as a string) and TCP, UDP or ANY.

    Beyond Cilium 1.1, port "0" with protocol TCP or UDP means every port of that
    protocol (what a NetworkPolicy port with only a protocol says).
    """

    port: str
    protocol: ProtocolName = "ANY"

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, value: object) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            fail("must be a string")
        if not value.isdigit():
            fail(f"unable to parse port {value!r}")
        if not 0 <= int(value) <= 65535:
            fail("port must be between 1 and 65535")
        return str(int(value))

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: object) -> str:
        if value is None or value == "":
            return "ANY"
        if not isinstance(value, str) or value.upper() not in ("TCP", "UDP", "ANY"):
            fail(f"invalid protocol {value!r}, must be {{ tcp | udp | any }}")
        return value.upper()

    @model_validator(mode="after")
    def _wildcard(self) -> PortProtocol:
        if self.port == "0" and self.protocol == "ANY":
            fail("port must be between 1 and 65535", "port")
        return self

    @property
    def number(self) -> int:
        """The port as an integer (0, with TCP or UDP: every port of that protocol)."""
        return int(self.port)


class PortRule(ApiModel):
    """`toPorts` item: the ports and optional L7 rules applying to them."""

    ports: tuple[PortProtocol, ...] | None = None
    rules: L7Rules | None = None

    @model_validator(mode="after")
    def _check(self) -> PortRule:
        ports = self.ports or ()
        if len(ports) > MAX_PORTS:
            fail(f"too many ports, the max is {MAX_PORTS}", "ports")
        if self.rules is not None and self.rules.kind is not None:
            for index, port in enumerate(ports):
                if port.protocol == "UDP":
                    fail(
                        f"L7 rules can only apply exclusively to TCP, not {port.protocol}",
                        f"ports[{index}].protocol",
                    )
        return self


class CIDRRule(ApiModel):
    """A CIDR with optional exceptions inside it."""

    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    cidr: CIDR
    except_: tuple[CIDR, ...] | None = Field(default=None, alias="except")

    @model_validator(mode="after")
    def _check(self) -> CIDRRule:
        outer = ipaddress.ip_network(self.cidr, strict=False)
        for index, item in enumerate(self.except_ or ()):
            inner = ipaddress.ip_network(item, strict=False)
            if inner.version != outer.version or not inner.subnet_of(outer):  # type: ignore[arg-type]
                fail(f"except CIDR {item!r} is not contained in {self.cidr!r}", f"except[{index}]")
        return self


class K8sServiceNamespace(ApiModel):
    """A Kubernetes service by name."""

    serviceName: str
    namespace: str | None = None


class K8sServiceSelectorNamespace(ApiModel):
    """Kubernetes services by label selector."""

    selector: LabelSelector
    namespace: str | None = None


class Service(ApiModel):
    """`toServices` item."""

    k8sService: K8sServiceNamespace | None = None
    k8sServiceSelector: K8sServiceSelectorNamespace | None = None


def _check_l3_exclusive(model: Any, members: tuple[str, ...]) -> None:
    present = [name for name in members if getattr(model, name)]
    if len(present) > 1:
        first, second = (name[0].upper() + name[1:] for name in present[:2])
        fail(f"Combining {first} and {second} is not supported yet")


class IngressRule(ApiModel):
    """One ingress allowance; at most one kind of L3 peer (endpoints, CIDR, CIDR set, entities).

    Unlike Cilium 1.1, CIDR peers may carry `toPorts` (combined L3+L4).
    """

    fromEndpoints: tuple[LabelSelector, ...] | None = None
    fromRequires: tuple[LabelSelector, ...] | None = None
    toPorts: tuple[PortRule, ...] | None = None
    fromCIDR: tuple[CIDR, ...] | None = None
    fromCIDRSet: tuple[CIDRRule, ...] | None = None
    fromEntities: tuple[Entity, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> IngressRule:
        _check_l3_exclusive(self, ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"))
        return self


class EgressRule(ApiModel):
    """One egress allowance; at most one kind of L3 peer, `toServices` without `toPorts`."""

    toEndpoints: tuple[LabelSelector, ...] | None = None
    toRequires: tuple[LabelSelector, ...] | None = None
    toPorts: tuple[PortRule, ...] | None = None
    toCIDR: tuple[CIDR, ...] | None = None
    toCIDRSet: tuple[CIDRRule, ...] | None = None
    toEntities: tuple[Entity, ...] | None = None
    toServices: tuple[Service, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> EgressRule:
        _check_l3_exclusive(
            self, ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities", "toServices")
        )
        if self.toServices and self.toPorts:
            fail("Combining ToServices and ToPorts is not supported yet")
        return self


class Rule(ApiModel):
    """A policy rule: which endpoints it selects and what it allows in and out.

    `ingress`/`egress` of None means the rule says nothing about that direction;
    a non-empty list turns on default-deny there (see `cilia.policy.resolve`).
    """

    endpointSelector: LabelSelector
    ingress: tuple[IngressRule, ...] | None = None
    egress: tuple[EgressRule, ...] | None = None
    labels: Labels = Labels()
    description: str | None = None

    def selects(self, labels: Labels) -> bool:
        """Whether the rule applies to an endpoint with `labels`."""
        return self.endpointSelector.matches(labels)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as accepted by `parse_rules`."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_api(self) -> dict[str, Any]:
        """Same as `to_dict` (the REST API form)."""
        return self.to_dict()
