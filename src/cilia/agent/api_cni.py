"""`POST /v1/cni`: the CNI commands `cilia-cni` relays (see `cilia.cni.handler`).

The body is the runtime's network configuration as the plugin read it on stdin; the
CNI_* variables come as headers of the same names (`CNI-COMMAND`, `CNI-CONTAINERID`...,
raw bytes, decoded as UTF-8 here). The answer is always 200 with what the plugin prints
and its exit code in `Cni-Exit`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from cilia.cni import handler
from cilia.cni.spec import ENVIRONMENT
from cilia.runtime.owner import EndpointOwner


def _header(request: Request, name: str) -> str:
    raw = request.headers.get(name.replace("_", "-"), "")
    return raw.encode("latin-1").decode("utf-8", "surrogateescape")


def cni_router(owner: EndpointOwner) -> APIRouter:
    r = APIRouter()

    @r.post("/v1/cni", response_class=Response)
    async def cni(request: Request) -> Response:
        command = _header(request, "CNI_COMMAND")
        env = {name: _header(request, name) for name in ENVIRONMENT}
        stdin = (await request.body()).decode("utf-8", "replace")
        code, out = await run_in_threadpool(handler.run, command, env, stdin, owner)
        return Response(out, media_type="application/json", headers={"Cni-Exit": str(code)})

    return r
