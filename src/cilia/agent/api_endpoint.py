"""REST routes through which runtimes attach containers: `PUT/PATCH/DELETE
/v1/endpoint/...` (as the reference) and the address reservations of `/v1/ipam`
(`?family=ipv6` for an IPv6 one, as the reference's `family` parameter).

Registered after the other endpoint routes so that `.../labels`, `.../log` and
`.../regenerate` keep their meaning.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Body
from pydantic import BaseModel, ValidationError

from cilia.agent.errors import AgentError
from cilia.agent.workloads import Workloads
from cilia.runtime.owner import EndpointPatch, EndpointRequest, Family

CONTAINER_KEY = "container-id:"

M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], body: dict[str, Any], what: str) -> M:
    """The body as `model`, or a 400 naming the field and the reason."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise AgentError(f"{what}: {field}: {first['msg']}") from None


def endpoint_router(workloads: Workloads) -> APIRouter:
    r = APIRouter()

    @r.put("/v1/endpoint/{key:path}")
    def endpoint_put(key: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        if not key.startswith(CONTAINER_KEY):
            raise AgentError(f"create endpoints as {CONTAINER_KEY}<id>, not {key!r}")
        cid = key.removeprefix(CONTAINER_KEY)
        if body.setdefault("container-id", cid) != cid:
            raise AgentError(f"container-id: {body['container-id']!r} differs from the path")
        return workloads.endpoint_put(_validated(EndpointRequest, body, "endpoint request"))

    @r.patch("/v1/endpoint/{key:path}")
    def endpoint_patch(key: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        return workloads.endpoint_patch(key, _validated(EndpointPatch, body, "endpoint change"))

    @r.delete("/v1/endpoint/{key:path}")
    def endpoint_delete(key: str) -> dict[str, Any]:
        if not workloads.endpoint_remove(key):
            raise AgentError(f"endpoint {key} not found", status=404)
        return {"deleted": True}

    @r.get("/v1/endpoint-check/{key:path}")
    def endpoint_check(key: str) -> dict[str, Any]:
        problems = workloads.endpoint_check(key)
        return {"ok": not problems, "problems": problems}

    @r.post("/v1/ipam")
    def ipam_allocate(family: Family = "ipv4") -> dict[str, Any]:
        return {family: workloads.ipam_allocate(family)}

    @r.delete("/v1/ipam/{ip}")
    def ipam_release(ip: str) -> dict[str, Any]:
        workloads.ipam_release(ip)
        return {"released": ip}

    return r
