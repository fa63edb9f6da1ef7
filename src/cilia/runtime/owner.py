"""The narrow interface between container runtimes and the agent's endpoints.

Every way a workload comes to exist (the embedded local-pod runtime, the CNI plugin,
the Docker network driver) ends in the same endpoint calls, and every runtime watcher
(containerd, CRI, Docker) reports what it learns through them. Runtime modules depend
on this module only, never on the agent.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

Family = Literal["ipv4", "ipv6"]
IPV6_OFF = "IPv6 is off in the cilia agent: start it with --enable-ipv6 true"
CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,191}$")
IFNAME = re.compile(r"^[^/:\s]{1,15}$")


class EndpointError(Exception):
    """A request the owner refuses; `status` says why as an HTTP status (409 a
    conflict, 503 come back later, 5xx a failure)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class EndpointRequest(BaseModel):
    """`PUT /v1/endpoint/container-id:<id>`: attach a workload's network namespace.

    The agent creates the veth pair into `netns` (named `interface-name` there),
    takes an address (or the ones given, reserved with `POST /v1/ipam`: a runtime
    that reserves reserves all, the IPv6 one only next to the IPv4 one), the identity
    of `labels` (the init identity while they are unknown) and programs the
    datapath; the call returns once policy is enforced.
    """

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    container_id: str = Field(alias="container-id")
    netns: str = Field(description="path of the network namespace (it must exist)")
    interface_name: str = Field("eth0", alias="interface-name")
    runtime: str = Field("cni", description="who made the namespace: cni, docker, local...")
    labels: list[str] | None = Field(
        None, description="security labels (`source:key=value`); None: not known yet"
    )
    namespace: str | None = Field(None, description="workload namespace (k8s or runtime)")
    name: str | None = Field(None, description="workload name (pod or container name)")
    ipv4: str | None = Field(None, description="address reserved before (Docker IPAM)")
    ipv6: str | None = Field(
        None, description="IPv6 address reserved before, with ipv4 (Docker IPAM)"
    )
    peer_in_host: bool = Field(
        False,
        alias="peer-in-host",
        description="leave the workload end of the veth down in the host namespace, named"
        " interface-name, for the runtime to move into netns itself (Docker does, after"
        " the driver's Join); netns need not exist yet",
    )

    @field_validator("container_id")
    @classmethod
    def _valid_container_id(cls, value: str) -> str:
        if not CONTAINER_ID.match(value):
            raise ValueError("use 1-192 letters, digits and '_.:-', starting alphanumeric")
        return value

    @field_validator("interface_name")
    @classmethod
    def _valid_ifname(cls, value: str) -> str:
        if not IFNAME.match(value):
            raise ValueError("an interface name has 1-15 characters, none of '/', ':', spaces")
        return value

    @field_validator("netns")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("give the absolute path of the network namespace")
        return value


class EndpointPatch(BaseModel):
    """`PATCH /v1/endpoint/<key>`: what a runtime learned after the endpoint was made."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    labels: list[str] | None = Field(None, description="new security labels (replace)")
    namespace: str | None = None
    name: str | None = None


class EndpointOwner(Protocol):
    """What runtimes may ask of the agent. Endpoint views are the REST representation
    (`GET /v1/endpoint/<key>`), which carries `container-id`, `runtime` and `addressing`."""

    def endpoint_put(self, req: EndpointRequest) -> dict[str, Any]:
        """Create (or return the unchanged existing) endpoint of a container."""

    def endpoint_patch(self, key: str, patch: EndpointPatch) -> dict[str, Any]:
        """Change labels or names; the endpoint moves to its new identity."""

    def endpoint_remove(self, key: str) -> bool:
        """Remove an endpoint and everything it holds; False when there was none."""

    def endpoint_views(self) -> list[dict[str, Any]]:
        """Every endpoint of this node."""

    def endpoint_check(self, key: str) -> list[str]:
        """What differs between an endpoint's kernel state and its desired state."""

    def ipam_allocate(self, family: Family = "ipv4") -> str:
        """Reserve an address of the node's pod range of `family` (EndpointError
        `IPV6_OFF` for IPv6 when the agent has it off)."""

    def ipam_release(self, ip: str) -> None:
        """Return a reserved address (of either family) no endpoint uses."""


class RuntimeWatcher(Protocol):
    """A runtime's label watcher, run inside the agent.

    `start` subscribes to the runtime's events (and lists what exists) on its own
    thread, reporting labels with `owner.endpoint_patch`; `health` is its line in
    `cilia status`.
    """

    name: str

    def start(self, owner: EndpointOwner) -> None: ...

    def stop(self) -> None: ...

    def health(self) -> dict[str, Any]:
        """`{"runtime": name, "endpoint": socket, "healthy": bool, "message": str}`."""
