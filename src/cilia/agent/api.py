"""REST API of the agent, served on a unix socket under /v1 (OpenAPI at /v1/openapi.json)."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import asdict
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cilia import __version__
from cilia.agent.api_cluster import HEALTHY_HEARTBEATS, cluster_router
from cilia.agent.api_cni import cni_router
from cilia.agent.api_config import config_router
from cilia.agent.api_endpoint import endpoint_router
from cilia.agent.api_observe import observe_router
from cilia.agent.api_services import services_router
from cilia.agent.daemon import Agent
from cilia.agent.errors import AgentError
from cilia.agent.trace import TraceError, TraceRequest, trace_api
from cilia.datapath.drop_reasons import reason_name
from cilia.k8s import present
from cilia.k8s.manifests import Manifest, ManifestError, parse_manifest_files
from cilia.k8s.strict_yaml import load_document
from cilia.labels import Labels
from cilia.labels.query import parse_selector, selects
from cilia.policy import Rule, ValidationError, parse_rules
from cilia.runtime.probe import probe

MATRIX_CONCURRENCY = 128


SOURCE_MAX = 4096


class ObjectsFile(BaseModel):
    """One manifest file: its text (multi-document YAML or JSON) and name."""

    text: str
    source: str = Field("-", max_length=SOURCE_MAX)


class ObjectsRequest(BaseModel):
    """Manifest text as read by the CLI (multi-document YAML), and/or several files.

    Every file of a request is validated before anything changes, and the whole request
    is applied (or deleted) as one batch.
    """

    text: str = ""
    source: str = Field("-", max_length=SOURCE_MAX)
    files: list[ObjectsFile] = Field(
        default_factory=list, description="more files, after `text` when that is not empty"
    )


class PolicyImportRequest(BaseModel):
    """Rules as a JSON list (the `cilia policy import` format), or the text of such a
    file (JSON or YAML, decoded strictly) with its name."""

    rules: Any = None
    text: str | None = Field(None, description="a rules file's text, instead of `rules`")
    source: str = Field("-", max_length=SOURCE_MAX)


class PolicyDeleteRequest(BaseModel):
    """Delete all rules, or those carrying every given label."""

    all: bool = False
    labels: list[str] = Field(default_factory=list)


class EndpointLabelsRequest(BaseModel):
    """Labels to add (`source:key=value`) and keys to delete; releases held labels."""

    add: list[str] = Field(default_factory=list)
    delete: list[str] = Field(default_factory=list)


Proto = Literal["TCP", "UDP"]


class ProbeRequest(BaseModel):
    """One connectivity probe from a pod to a pod."""

    source: str = Field(description="NS/POD")
    destination: str = Field(description="NS/POD")
    port: int = Field(ge=1, le=65535)
    protocol: Proto = "TCP"
    timeout: float = Field(1.0, gt=0, le=30)
    family: Literal["4", "6", "both"] | None = Field(
        None, description="address family probed (default: both when IPv6 is on, else 4)"
    )


class MatrixRequest(BaseModel):
    """Probe every ordered pair of pods on every port and protocol."""

    ports: list[int] = Field(default_factory=lambda: [80])
    protocols: list[Proto] = Field(default_factory=lambda: ["TCP"])  # type: ignore[arg-type]
    namespaces: list[str] = Field(default_factory=list)
    timeout: float = Field(1.0, gt=0, le=30)
    family: Literal["4", "6", "both"] | None = Field(
        None, description="address family probed (default: both when IPv6 is on, else 4)"
    )


def _split_pod(ref: str) -> tuple[str, str]:
    if "/" not in ref:
        return "default", ref
    ns, name = ref.split("/", 1)
    return ns, name


def create_app(agent: Agent) -> FastAPI:
    """Build the FastAPI application bound to one agent."""
    app = FastAPI(
        title="Cilia agent API",
        version=__version__,
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(observe_router(agent))
    app.include_router(services_router(agent))
    app.include_router(cluster_router(agent))
    app.include_router(config_router(lambda: agent.config))

    @app.exception_handler(AgentError)
    async def _agent_error(_: Request, exc: AgentError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(ManifestError)
    async def _manifest_error(_: Request, exc: ManifestError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(ValidationError)
    async def _validation_error(_: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(TraceError)
    async def _trace_error(_: Request, exc: TraceError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.get("/v1/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/status")
    def status(all_controllers: bool = False, all_redirects: bool = False) -> dict[str, Any]:
        out = agent.status()
        if all_controllers:
            out["controller-list"] = [c.to_api() for c in agent.controllers.all()]
        if all_redirects:
            with agent.lock:
                out["redirect-list"] = [asdict(r) for r in agent.l7.redirects()]
        return out

    @app.get("/v1/config")
    def config() -> dict[str, Any]:
        return agent.config.model_dump(mode="json")

    @app.get("/v1/endpoint")
    def endpoint_list() -> list[dict[str, Any]]:
        with agent.lock:
            return [ep.to_api() for ep in sorted(agent.endpoints.values(), key=lambda e: e.id)]

    @app.get("/v1/endpoint/{key:path}/log")
    def endpoint_log(key: str) -> list[dict[str, Any]]:
        return list(agent.endpoint(key).log)

    @app.post("/v1/endpoint/{key:path}/regenerate")
    def endpoint_regenerate(key: str) -> dict[str, Any]:
        return agent.regenerate_endpoint(key).to_api()

    @app.put("/v1/endpoint/{key:path}/labels")
    def endpoint_labels(key: str, req: EndpointLabelsRequest) -> dict[str, Any]:
        return agent.endpoint_labels(key, req.add, req.delete).to_api()

    @app.get("/v1/endpoint/{key:path}")
    def endpoint_get(key: str) -> dict[str, Any]:
        ep = agent.endpoint(key)
        out = ep.to_api()
        out["policy"] = [
            {
                "direction": e.direction.name.lower(),
                "identity": e.identity,
                "port": e.port,
                "protocol": e.protocol.name,
            }
            for e in sorted(ep.policy.entries)
        ]
        return out

    @app.get("/v1/identity")
    def identity_list() -> list[dict[str, Any]]:
        with agent.lock:
            return [{"id": i, "labels": labels.to_list()} for i, labels in agent.identities.items()]

    @app.get("/v1/identity/{identity}")
    def identity_get(identity: int) -> dict[str, Any]:
        with agent.lock:
            labels = agent.identities.labels_of(identity)
        if labels is None:
            raise AgentError(f"identity {identity} not found", status=404)
        return {"id": identity, "labels": labels.to_list()}

    @app.get("/v1/policy")
    def policy_get() -> dict[str, Any]:
        with agent.lock:
            return {
                "revision": agent.repo.revision,
                "rules": [r.to_api() for r in agent.repo.rules],
            }

    def _rules(req: PolicyImportRequest) -> list[Rule]:
        data = req.rules
        if req.text is not None:
            data = load_document(req.text, req.source, agent.config.max_nesting_depth)
        return parse_rules(data, max_rules=agent.config.max_rules_per_policy)

    @app.put("/v1/policy")
    def policy_import(req: PolicyImportRequest) -> dict[str, Any]:
        try:
            rules = _rules(req)
        except (ValidationError, ManifestError):
            agent.metrics.policy_import_errors += 1
            raise
        revision = agent.policy_import(rules)
        return {"revision": revision, "imported": len(rules)}

    @app.post("/v1/policy/validate")
    def policy_validate(req: PolicyImportRequest) -> dict[str, Any]:
        return {"valid": True, "rules": len(_rules(req))}

    @app.api_route("/v1/policy/resolve", methods=["GET", "POST"])
    def policy_resolve(req: TraceRequest) -> dict[str, Any]:
        return trace_api(agent, req)

    @app.post("/v1/policy/resolve/batch")
    def policy_resolve_batch(reqs: list[TraceRequest]) -> list[dict[str, Any]]:
        return [trace_api(agent, r) for r in reqs]

    @app.delete("/v1/policy")
    def policy_delete(req: PolicyDeleteRequest) -> dict[str, Any]:
        if not req.all and not req.labels:
            raise AgentError("name labels to delete, or ask for all")
        labels = None if req.all else Labels.parse(req.labels)
        revision, deleted = agent.policy_delete(labels)
        return {"revision": revision, "deleted": deleted}

    def _manifests(req: ObjectsRequest, action: str) -> list[Manifest]:
        """Every object of the request, all validated; none is an error, as in kubectl."""
        files = [(f.source, f.text) for f in req.files]
        if req.text or not files:
            files.insert(0, (req.source, req.text))
        manifests = parse_manifest_files(files, agent.config.input_limits)
        if not manifests:
            raise AgentError(f"no objects passed to {action}")
        return manifests

    @app.post("/v1/objects/validate")
    def objects_validate(req: ObjectsRequest) -> dict[str, Any]:
        return {"valid": True, "objects": len(_manifests(req, "validate"))}

    @app.post("/v1/objects/apply")
    def objects_apply(req: ObjectsRequest) -> dict[str, Any]:
        manifests = _manifests(req, "apply")
        return {"results": agent.apply(manifests), "revision": agent.repo.revision}

    @app.post("/v1/objects/delete")
    def objects_delete(req: ObjectsRequest) -> dict[str, Any]:
        manifests = _manifests(req, "delete")
        return {"results": agent.delete(manifests), "revision": agent.repo.revision}

    @app.get("/v1/objects/{kind}")
    def objects_list(
        kind: str,
        fmt: Literal["rows", "k8s"] = Query("rows", alias="format"),
        namespace: str = "",
        labelSelector: str = "",  # the Kubernetes API's name
        name: str = "",
    ) -> Any:
        """`cilia get KIND`: the agent's rows, or (`format=k8s`) a Kubernetes `List`;
        filtered by namespace (namespaced kinds), label selector and name."""
        selector = parse_selector(labelSelector)

        def wanted(meta: dict[str, Any], namespaced: bool) -> bool:
            return (
                (not namespace or not namespaced or meta.get("namespace") == namespace)
                and (not name or meta.get("name") == name)
                and selects(selector, meta.get("labels") or {})
            )

        if kind == "nodes" and fmt == "k8s":
            nodes = _k8s_nodes()
            return present.k8s_list(n for n in nodes if wanted(n["metadata"], False))
        with agent.lock:
            try:
                items = agent.objects.listing(kind, agent.pod_status())
            except ValueError as exc:
                raise AgentError(str(exc), status=404) from None
            items = [i for i in items if wanted(i["object"]["metadata"], kind != "namespaces")]
            if kind == "services":
                agent.services.add_backends(items)
            for item in items:
                obj = item["object"]
                if obj.get("kind") == "CiliumNetworkPolicy":
                    key = f"CiliumNetworkPolicy/{item['namespace']}/{item['name']}"
                    annotations = obj["metadata"].get("annotations", {})
                    obj["status"] = agent.policy_status(key, annotations)
            if fmt == "rows":
                return items
            hosts = _host_ips()
            return present.k8s_list(_k8s_item(kind, i, hosts) for i in items)

    def _host_ips() -> dict[str, str]:
        """Node name -> the address a pod's `status.hostIP` shows: the underlay address
        in a cluster, the router address (the host's address towards pods) alone."""
        if agent.cluster is None:
            return {agent.config.node_name: agent.config.host_router_ip}
        return {n.name: n.underlay_ip for n in agent.cluster.member.nodes().values()}

    def _k8s_item(kind: str, item: dict[str, Any], hosts: dict[str, str]) -> dict[str, Any]:
        if kind == "pods":
            return present.pod(item["object"], item, hosts.get(item.get("node") or ""))
        if kind == "namespaces":
            return present.namespace(item["object"])
        if kind == "policies":
            return present.policy(item["object"], item["rules"])
        return present.service(item["object"], item["backends"])

    def _k8s_nodes() -> list[dict[str, Any]]:
        if agent.cluster is None:
            raise AgentError("this agent does not run in cluster mode (--kvstore etcd)", 409)
        stale_after = HEALTHY_HEARTBEATS * agent.config.lease_keepalive
        now = time.time()
        return [
            present.node(
                n.name,
                n.underlay_ip,
                n.pod_cidr,
                n.heartbeat,
                now - n.heartbeat < stale_after,
                n.ipv6_cidr,
            )
            for n in sorted(agent.cluster.member.nodes().values(), key=lambda n: n.name)
        ]

    @app.delete("/v1/pods/{namespace}/{name}")
    def pod_delete(namespace: str, name: str) -> dict[str, Any]:
        agent.delete_pod(namespace, name)
        return {"deleted": f"{namespace}/{name}"}

    @app.get("/v1/pods/{namespace}/{name}/netns")
    def pod_netns(namespace: str, name: str) -> dict[str, Any]:
        with agent.lock:
            return {"netns": agent.pod_netns(namespace, name)}

    def _families(family: str | None) -> list[int]:
        if family is None:
            return [4, 6] if agent.config.enable_ipv6 else [4]
        return [4, 6] if family == "both" else [int(family)]

    async def _probe_pair(
        src: str, dst: str, port: int, proto: str, timeout: float, family: int = 4
    ) -> dict[str, Any]:
        with agent.lock:
            src_path = agent.pod_netns(*_split_pod(src))
            dst_ip = agent.pod_address("/".join(_split_pod(dst)), family)
        row = {"from": src, "to": dst, "port": port, "protocol": proto, "family": family}
        if not dst_ip:
            return row | {"result": "denied", "detail": f"no IPv{family} address", "latency_ms": 0}
        res = await probe(src_path, dst_ip, port, proto, timeout)
        return row | {
            "address": dst_ip,
            "result": res.result,
            "detail": res.detail,
            "latency_ms": round(res.latency_ms, 2),
        }

    @app.post("/v1/probe")
    async def probe_one(req: ProbeRequest) -> dict[str, Any]:
        """One probe per family; `result` is allowed only when every family's is."""
        results = await asyncio.gather(
            *(
                _probe_pair(req.source, req.destination, req.port, req.protocol, req.timeout, f)
                for f in _families(req.family)
            )
        )
        allowed = all(r["result"] == "allowed" for r in results)
        return {**results[0], "result": "allowed" if allowed else "denied", "families": results}

    @app.post("/v1/probe/matrix")
    async def probe_matrix(req: MatrixRequest) -> dict[str, Any]:
        with agent.lock:
            sources = agent.pod_names(req.namespaces, local_only=True)
            names = agent.pod_names(req.namespaces, local_only=False)
        sem = asyncio.Semaphore(MATRIX_CONCURRENCY)

        async def one(src: str, dst: str, port: int, proto: str, family: int) -> dict[str, Any]:
            async with sem:
                return await _probe_pair(src, dst, port, proto, req.timeout, family)

        started = time.monotonic()
        families = _families(req.family)
        pairs = itertools.product(sources, names, req.ports, req.protocols, families)
        results = await asyncio.gather(*(one(*pair) for pair in pairs))
        return {
            "pods": names,
            "families": families,
            "sources": sources,
            "results": list(results),
            "elapsed_seconds": round(time.monotonic() - started, 2),
        }

    @app.get("/v1/bpf/policy")
    def bpf_policy(endpoint: int | None = None) -> list[dict[str, Any]]:
        with agent.lock:
            tuples = agent.datapath.policy.dump()
        return [
            {
                "endpoint": ep_id,
                "direction": "ingress" if direction == 0 else "egress",
                "identity": identity,
                "port": port,
                "protocol": proto,
            }
            for ep_id, direction, identity, port, proto in sorted(tuples)
            if endpoint is None or ep_id == endpoint
        ]

    @app.get("/v1/bpf/metrics")
    def bpf_metrics() -> list[dict[str, Any]]:
        with agent.lock:
            counters = agent.datapath.counters()
        return [
            {
                "reason": reason_name(reason),
                "reason_code": reason,
                "direction": "ingress" if direction == 0 else "egress",
                "packets": packets,
                "bytes": nbytes,
            }
            for (reason, direction), (packets, nbytes) in sorted(counters.items())
        ]

    app.include_router(cni_router(agent.workloads))
    app.include_router(endpoint_router(agent.workloads))
    return app
