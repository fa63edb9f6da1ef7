"""The CNI commands, carried out inside the agent on its endpoint owner.

`cilia-cni` relays each call here (`POST /v1/cni`) with the runtime's CNI_* variables
and its network configuration, and prints what `run` returns: the plugin stays a few
imports small while the specification's rules (versions, result formats, error codes,
idempotent DEL, CHECK, GC) live in one place. ADD is synchronous: it returns once the
container's endpoint enforces policy (the init identity at least).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from cilia.cni.spec import (
    AGENT_FAILED,
    AGENT_REFUSED,
    CHECK_FAILED,
    COMMANDS,
    CONTAINER_UNKNOWN,
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    SPEC_VERSION,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
)
from cilia.runtime.owner import EndpointError, EndpointOwner, EndpointRequest

CONTAINER_KEY = "container-id:"


class CniError(Exception):
    """An error reported as CNI error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def error_document(exc: CniError, version: str) -> dict[str, Any]:
    """The CNI error JSON of `exc`."""
    err: dict[str, Any] = {"cniVersion": version, "code": exc.code, "msg": exc.msg}
    if exc.details:
        err["details"] = exc.details
    return err


def run(command: str, env: Mapping[str, str], stdin: str, owner: EndpointOwner) -> tuple[int, str]:
    """Carry out one CNI command: (exit code, what the plugin prints)."""
    try:
        out = _dispatch(command, env, stdin, owner)
    except CniError as exc:
        return 1, json.dumps(error_document(exc, _version_of(stdin))) + "\n"
    return 0, "" if out is None else json.dumps(out, indent=2) + "\n"


def _dispatch(
    command: str, env: Mapping[str, str], stdin: str, owner: EndpointOwner
) -> dict[str, Any] | None:
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command or '(empty)'} is not known")
    conf = read_config(stdin)
    if command == "ADD":
        return cmd_add(conf, env, owner)
    if command == "DEL":
        cmd_del(env, owner)
    elif command == "CHECK":
        cmd_check(conf, env, owner)
    elif command == "GC":
        cmd_gc(conf, owner)
    # STATUS: an agent that answers is ready for ADD.
    return None


def _version_of(stdin: str) -> str:
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, RecursionError):
        return SPEC_VERSION
    return version if version in SUPPORTED_VERSIONS else SPEC_VERSION


def _env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise CniError(INVALID_ENVIRONMENT, f"{name} is not set")
    return value


def cni_args(env: Mapping[str, str]) -> dict[str, str]:
    """CNI_ARGS (`K=V;K=V`) as a dict."""
    out: dict[str, str] = {}
    for item in filter(None, env.get("CNI_ARGS", "").split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, "CNI_ARGS is malformed", f"entry {item!r}")
        out[key] = value
    return out


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def read_config(text: str) -> dict[str, Any]:
    """The network configuration from stdin, checked for what the plugin needs."""
    try:
        # NaN and Infinity are not JSON, and would come back in a result (dns)
        conf = json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        raise CniError(DECODE_FAILURE, "network configuration is not JSON", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(INVALID_CONFIG, "network configuration must be a JSON object")
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "network configuration: cniVersion is missing")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"CNI version {version} is not supported",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    for key in ("name", "type"):
        if not isinstance(conf.get(key), str) or not conf[key]:
            raise CniError(INVALID_CONFIG, f"network configuration: {key} is missing")
    if not isinstance(conf.get("dns", {}), dict):
        raise CniError(INVALID_CONFIG, "network configuration: dns must be an object")
    return conf


def result(version: str, ep: dict[str, Any], ifname: str, netns: str, dns: Any) -> dict[str, Any]:
    """The ADD result in the format of `version`."""
    addr = ep["addressing"]
    modern = version in ("1.0.0", "1.1.0")
    sandbox: dict[str, Any] = {"name": ifname, "mac": addr["mac"], "sandbox": netns}
    if version == "1.1.0":
        sandbox["mtu"] = addr["mtu"]
    ips: list[dict[str, Any]] = [
        {"address": f"{addr['ipv4']}/32", "gateway": addr["gateway"], "interface": 1}
    ]
    if addr.get("ipv6"):
        ips.append({"address": f"{addr['ipv6']}/128", "gateway": addr["gateway6"], "interface": 1})
    if not modern:
        for ip in ips:
            ip["version"] = "6" if ":" in ip["address"] else "4"
    routes = [
        {k: v for k, v in r.items() if k != "mtu" or version == "1.1.0"}
        for r in addr["routes"]
        if r["dst"] in ("0.0.0.0/0", "::/0")
    ]
    return {
        "cniVersion": version,
        "interfaces": [{"name": ep["interface"], "mac": addr["host-mac"]}, sandbox],
        "ips": ips,
        "routes": routes,
        "dns": dns,
    }


def _refused(exc: Exception, what: str) -> CniError:
    """An owner error as CNI error: 11 when the agent asks to come back later
    (HTTP 503), 100 for a request it refuses, 101 when it failed."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "request"
        return CniError(AGENT_REFUSED, f"{what}: refused", f"{field}: {first['msg']}")
    status = exc.status if isinstance(exc, EndpointError) else 500
    code = TRY_AGAIN_LATER if status == 503 else AGENT_REFUSED if status < 500 else AGENT_FAILED
    return CniError(code, f"{what}: the cilia agent answered {status}", str(exc))


def cmd_add(conf: dict[str, Any], env: Mapping[str, str], owner: EndpointOwner) -> dict[str, Any]:
    cid, netns = _env(env, "CNI_CONTAINERID"), _env(env, "CNI_NETNS")
    ifname = _env(env, "CNI_IFNAME")
    args = cni_args(env)
    what = f"creating the endpoint of {cid}"
    try:
        req = EndpointRequest.model_validate(
            {
                "container-id": cid,
                "netns": netns,
                "interface-name": ifname,
                "runtime": "cni",
                "namespace": args.get("K8S_POD_NAMESPACE"),
                "name": args.get("K8S_POD_NAME"),
            }
        )
        ep = owner.endpoint_put(req)
    except Exception as exc:
        raise _refused(exc, what) from None
    return result(conf["cniVersion"], ep, ifname, netns, conf.get("dns", {}))


def cmd_del(env: Mapping[str, str], owner: EndpointOwner) -> None:
    """Remove the container's endpoint; an unknown container is already deleted."""
    cid = _env(env, "CNI_CONTAINERID")
    try:
        owner.endpoint_remove(CONTAINER_KEY + cid)
    except Exception as exc:
        raise _refused(exc, f"deleting the endpoint of {cid}") from None


def _view(owner: EndpointOwner, cid: str) -> dict[str, Any] | None:
    return next((v for v in owner.endpoint_views() if v.get("container-id") == cid), None)


def cmd_check(conf: dict[str, Any], env: Mapping[str, str], owner: EndpointOwner) -> None:
    cid = _env(env, "CNI_CONTAINERID")
    _env(env, "CNI_NETNS")
    ep = _view(owner, cid)
    if ep is None:
        raise CniError(CONTAINER_UNKNOWN, f"container {cid} has no cilia endpoint")
    problems: list[str] = []
    if ep.get("pod-interface") != env.get("CNI_IFNAME", ep.get("pod-interface")):
        problems.append(f"the endpoint's interface is {ep.get('pod-interface')}")
    prev = conf.get("prevResult")
    ips = prev.get("ips") if isinstance(prev, dict) else None
    prev_ips = {
        i["address"].split("/")[0]
        for i in (ips if isinstance(ips, list) else [])
        if isinstance(i, dict) and isinstance(i.get("address"), str)
    }
    own = {ip for ip in (ep["ipv4"], ep.get("ipv6")) if ip}
    if prev_ips and prev_ips != own:
        problems.append(f"the endpoint has {sorted(own)}, the previous result {sorted(prev_ips)}")
    try:
        problems += owner.endpoint_check(CONTAINER_KEY + cid)
    except Exception as exc:
        raise _refused(exc, f"checking the endpoint of {cid}") from None
    if problems:
        raise CniError(
            CHECK_FAILED, f"container {cid} is not as cilia set it up", "; ".join(problems)
        )


def cmd_gc(conf: dict[str, Any], owner: EndpointOwner) -> None:
    """Remove the CNI endpoints that are not in the runtime's list of valid attachments."""
    valid = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments"))
    if not isinstance(valid, list):
        raise CniError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments (a list)")
    keep = {
        (a["containerID"], a["ifname"])
        for a in valid
        if isinstance(a, dict)
        and isinstance(a.get("containerID"), str)
        and isinstance(a.get("ifname"), str)
    }
    for ep in owner.endpoint_views():
        if ep.get("runtime") == "cni" and (ep["container-id"], ep["pod-interface"]) not in keep:
            cid = ep["container-id"]
            try:
                owner.endpoint_remove(CONTAINER_KEY + cid)
            except Exception as exc:
                raise _refused(exc, f"collecting the endpoint of {cid}") from None
