"""`cilia-cni`: the CNI plugin (spec 1.1.0; 1.0.0, 0.4.0 and 0.3.1 accepted).

A thin, synchronous client of the agent's endpoint API: ADD returns only once the
agent enforces policy on the container's endpoint (the init identity at least). It
runs once per container, so it imports nothing beyond the standard library's
`json`, `os`, `socket` and `sys`: its one HTTP/1.1 exchange per call over the
agent's unix socket is written by hand, since importing `http.client` alone (with
`email`) takes about 30 ms of the plugin's start.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any, NoReturn

SPEC_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
DEFAULT_AGENT_SOCKET = "/var/run/cilia/cilia.sock"
ADD_TIMEOUT = 120.0
"""ADD waits for identity and policy; a store outage can make that slow."""

# Error codes of the CNI specification, and ours (100 and up).
INCOMPATIBLE_VERSION = 1
CONTAINER_UNKNOWN = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
AGENT_REFUSED = 100
AGENT_FAILED = 101
CHECK_FAILED = 102


class CniError(Exception):
    """An error the plugin reports as CNI error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


class Agent:
    """Calls to the agent's REST API."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def call(
        self, method: str, path: str, body: Any = None, timeout: float = 30.0
    ) -> tuple[int, Any]:
        """(HTTP status, decoded JSON); raises CniError 11 when the agent is away."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} /v1{path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(self.socket_path)
                sock.sendall(head.encode() + payload)
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise CniError(
                TRY_AGAIN_LATER,
                "the cilia agent is not running",
                f"{self.socket_path}: {exc.strerror}",
            ) from None
        except OSError as exc:
            raise CniError(IO_FAILURE, "talking to the cilia agent failed", str(exc)) from None
        return parse_response(b"".join(chunks))


def parse_response(raw: bytes) -> tuple[int, Any]:
    """Status and JSON body of an HTTP/1.1 response read to its end."""
    header, _, content = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise CniError(IO_FAILURE, "the cilia agent's answer is not HTTP", lines[0]) from None
    if any(h.lower().replace(" ", "") == "transfer-encoding:chunked" for h in lines[1:]):
        content = _dechunk(content)
    try:
        return status, json.loads(content) if content else None
    except ValueError:
        return status, {"error": content.decode(errors="replace")}


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def _agent_error(status: int, body: Any, what: str) -> CniError:
    reason = body.get("error", body) if isinstance(body, dict) else body
    code = TRY_AGAIN_LATER if status == 503 else AGENT_REFUSED if status < 500 else AGENT_FAILED
    return CniError(code, f"{what}: the cilia agent answered {status}", str(reason))


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise CniError(INVALID_ENVIRONMENT, f"{name} is not set")
    return value


def cni_args() -> dict[str, str]:
    """CNI_ARGS (`K=V;K=V`) as a dict."""
    out: dict[str, str] = {}
    for item in filter(None, os.environ.get("CNI_ARGS", "").split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, "CNI_ARGS is malformed", f"entry {item!r}")
        out[key] = value
    return out


def read_config(text: str) -> dict[str, Any]:
    """The network configuration from stdin, checked for what the plugin needs."""
    try:
        conf = json.loads(text)
    except ValueError as exc:
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
    sock = conf.get("agent-socket", DEFAULT_AGENT_SOCKET)
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise CniError(INVALID_CONFIG, "network configuration: agent-socket must be a path")
    dns = conf.get("dns", {})
    if not isinstance(dns, dict):
        raise CniError(INVALID_CONFIG, "network configuration: dns must be an object")
    return conf


def result(version: str, ep: dict[str, Any], ifname: str, netns: str, dns: Any) -> dict[str, Any]:
    """The ADD result in the format of `version`."""
    addr = ep["addressing"]
    modern = version in ("1.0.0", "1.1.0")
    sandbox: dict[str, Any] = {"name": ifname, "mac": addr["mac"], "sandbox": netns}
    if version == "1.1.0":
        sandbox["mtu"] = addr["mtu"]
    ip: dict[str, Any] = {
        "address": f"{addr['ipv4']}/32",
        "gateway": addr["gateway"],
        "interface": 1,
    }
    if not modern:
        ip["version"] = "4"
    routes = [
        {k: v for k, v in r.items() if k != "mtu" or version == "1.1.0"}
        for r in addr["routes"]
        if r["dst"] == "0.0.0.0/0"
    ]
    return {
        "cniVersion": version,
        "interfaces": [{"name": ep["interface"], "mac": addr["host-mac"]}, sandbox],
        "ips": [ip],
        "routes": routes,
        "dns": dns,
    }


def cmd_add(conf: dict[str, Any], agent: Agent) -> dict[str, Any]:
    cid, netns, ifname = _env("CNI_CONTAINERID"), _env("CNI_NETNS"), _env("CNI_IFNAME")
    args = cni_args()
    body = {
        "container-id": cid,
        "netns": netns,
        "interface-name": ifname,
        "runtime": "cni",
        "namespace": args.get("K8S_POD_NAMESPACE"),
        "name": args.get("K8S_POD_NAME"),
    }
    status, ep = agent.call("PUT", f"/endpoint/container-id:{cid}", body, timeout=ADD_TIMEOUT)
    if status != 200:
        raise _agent_error(status, ep, f"creating the endpoint of {cid}")
    return result(conf["cniVersion"], ep, ifname, netns, conf.get("dns", {}))


def cmd_del(agent: Agent) -> None:
    cid = _env("CNI_CONTAINERID")
    status, body = agent.call("DELETE", f"/endpoint/container-id:{cid}")
    if status not in (200, 404):  # an unknown container is already deleted
        raise _agent_error(status, body, f"deleting the endpoint of {cid}")


def cmd_check(conf: dict[str, Any], agent: Agent) -> None:
    cid = _env("CNI_CONTAINERID")
    _env("CNI_NETNS")
    status, ep = agent.call("GET", f"/endpoint/container-id:{cid}")
    if status == 404:
        raise CniError(CONTAINER_UNKNOWN, f"container {cid} has no cilia endpoint")
    if status != 200:
        raise _agent_error(status, ep, f"reading the endpoint of {cid}")
    problems: list[str] = []
    if ep.get("pod-interface") != os.environ.get("CNI_IFNAME", ep.get("pod-interface")):
        problems.append(f"the endpoint's interface is {ep.get('pod-interface')}")
    prev = conf.get("prevResult") or {}
    prev_ips = {i.get("address", "").split("/")[0] for i in prev.get("ips", [])}
    if prev_ips and ep["ipv4"] not in prev_ips:
        problems.append(f"the endpoint has {ep['ipv4']}, the previous result {sorted(prev_ips)}")
    status, check = agent.call("GET", f"/endpoint-check/container-id:{cid}")
    if status != 200:
        raise _agent_error(status, check, f"checking the endpoint of {cid}")
    problems += check["problems"]
    if problems:
        raise CniError(
            CHECK_FAILED, f"container {cid} is not as cilia set it up", "; ".join(problems)
        )


def cmd_status(agent: Agent) -> None:
    try:
        status, body = agent.call("GET", "/healthz", timeout=5.0)
    except CniError as exc:
        raise CniError(NOT_AVAILABLE, "the cilia agent is not available", exc.details) from None
    if status != 200:
        raise CniError(NOT_AVAILABLE, "the cilia agent is not healthy", json.dumps(body))


def cmd_gc(conf: dict[str, Any], agent: Agent) -> None:
    """Remove the CNI endpoints that are not in the runtime's list of valid attachments."""
    valid = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments"))
    if not isinstance(valid, list):
        raise CniError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments (a list)")
    keep = {(a.get("containerID"), a.get("ifname")) for a in valid if isinstance(a, dict)}
    status, endpoints = agent.call("GET", "/endpoint")
    if status != 200:
        raise _agent_error(status, endpoints, "listing endpoints")
    for ep in endpoints:
        if ep.get("runtime") == "cni" and (ep["container-id"], ep["pod-interface"]) not in keep:
            cid = ep["container-id"]
            status, body = agent.call("DELETE", f"/endpoint/container-id:{cid}")
            if status not in (200, 404):
                raise _agent_error(status, body, f"collecting the endpoint of {cid}")


def run(command: str, stdin: str) -> dict[str, Any] | None:
    """Carry out one CNI command; its result, or None when it prints nothing."""
    if command == "VERSION":
        return {"cniVersion": SPEC_VERSION, "supportedVersions": SUPPORTED_VERSIONS}
    if command not in ("ADD", "DEL", "CHECK", "STATUS", "GC"):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command or '(empty)'} is not known")
    conf = read_config(stdin)
    agent = Agent(conf.get("agent-socket", DEFAULT_AGENT_SOCKET))
    if command == "ADD":
        return cmd_add(conf, agent)
    if command == "DEL":
        cmd_del(agent)
    elif command == "CHECK":
        cmd_check(conf, agent)
    elif command == "STATUS":
        cmd_status(agent)
    else:
        cmd_gc(conf, agent)
    return None


def _version_of(stdin: str) -> str:
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return SPEC_VERSION
    return version if version in SUPPORTED_VERSIONS else SPEC_VERSION


def main() -> NoReturn:
    """Console script: the command in CNI_COMMAND, the configuration on stdin."""
    command = os.environ.get("CNI_COMMAND", "")
    stdin = "" if command == "VERSION" else sys.stdin.read()
    try:
        out = run(command, stdin)
    except CniError as exc:
        err = {"cniVersion": _version_of(stdin), "code": exc.code, "msg": exc.msg}
        if exc.details:
            err["details"] = exc.details
        json.dump(err, sys.stdout)
        sys.stdout.write("\n")
        sys.exit(1)
    if out is not None:
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
