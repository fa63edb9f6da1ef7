"""Cilia as a Docker (libnetwork) remote network driver and IPAM driver.

Docker finds the plugin by its socket, ``/run/docker/plugins/<name>.sock``, and talks
JSON over HTTP POST to it: ``docker network create --driver NAME --ipam-driver NAME N``
then ``docker run --network N ...``. The server runs on its own thread inside the
agent and turns Docker's calls into the agent's endpoint calls (`EndpointOwner`):

- IPAM: ``RequestAddress`` reserves an address of the node's pod range
  (``owner.ipam_allocate``), ``ReleaseAddress`` returns it. The pool Docker sees is
  ``0.0.0.0/0`` (the node's range is the agent's business, as in the reference); the
  network's gateway is the agent's router address, the containers' next hop. A
  network made with ``--ipv6`` (agent with IPv6 on) also has the pool ``::/0`` of the
  node's IPv6 range, with the link-local gateway ``fe80::1`` that local pods use too
  (the datapath answers the containers' neighbour solicitations).
- ``Join`` creates the endpoint: ``owner.endpoint_put`` with ``runtime="docker"`` and
  the sandbox path. Docker makes that namespace only after Join (in runc's prestart
  hook) and then starts the container at once, so the agent leaves the container end
  of the veth pair in the host namespace, named as given here; Docker moves it into the
  sandbox, renames it ``eth0`` and sets its address and the routes this Join returns.
  Join returns once the endpoint's datapath enforces policy (the init identity: the
  container's labels come later from `DockerWatcher`), so the container's first packet
  is already policed.
- ``DeleteEndpoint`` removes the endpoint; ``Leave`` has nothing to undo.

Endpoints are keyed ``container-id:docker:<EndpointID>`` (Docker's endpoint id is what
both the driver and ``docker inspect`` know). Errors go back as ``{"Err": "..."}``,
which Docker shows to the user.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from cilia.runtime.owner import IPV6_OFF, EndpointOwner, EndpointRequest

log = logging.getLogger(__name__)

PLUGIN_DIR = Path("/run/docker/plugins")
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
POOL_ID, POOL = "cilia-ipv4", "0.0.0.0/0"
POOL_ID6, POOL6 = "cilia-ipv6", "::/0"
LOCAL_SPACE = "cilia-local"
GLOBAL_SPACE = "cilia-global"
GATEWAY_REQUEST = "com.docker.network.gateway"
ROUTE_NEXTHOP, ROUTE_CONNECTED = 0, 1  # libnetwork's route types
CONTAINER_PREFIX = "tmp"  # + 12 hex digits of the endpoint id: 15 characters


class PluginError(Exception):
    """A request Docker must be told no (the text is shown to the user)."""


def endpoint_key(endpoint_id: str) -> str:
    """The agent's key of a Docker endpoint."""
    return f"container-id:{container_id(endpoint_id)}"


def container_id(endpoint_id: str) -> str:
    """The container id the agent knows a Docker endpoint by."""
    return f"docker:{endpoint_id}"


def _address(cidr: str) -> str:
    return cidr.split("/", 1)[0]


def _host_prefix(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def static_routes(
    routes: list[dict[str, Any]], gateway: str, gateway6: str = ""
) -> list[dict[str, Any]]:
    """The agent's pod routes as Docker StaticRoutes; the default routes via the
    gateways are Join's ``Gateway`` and ``GatewayIPv6`` themselves."""
    defaults = {("0.0.0.0/0", gateway), ("default", gateway), ("::/0", gateway6)}
    out: list[dict[str, Any]] = []
    for route in routes:
        dst, gw = str(route["dst"]), route.get("gw")
        if (dst, gw) in defaults:
            continue
        if "/" not in dst:
            dst = _host_prefix(dst)
        if gw:
            out.append({"Destination": dst, "RouteType": ROUTE_NEXTHOP, "NextHop": gw})
        else:
            out.append({"Destination": dst, "RouteType": ROUTE_CONNECTED})
    return out


class DockerNetworkPlugin:
    """The remote network + IPAM driver `name`, served on `plugin_dir/<name>.sock`.

    `gateway` is the address the containers route through: the agent's router
    address, local to the host (the kernel answers the containers' ARP for it).
    `gateway6` is their IPv6 one ("": the agent has IPv6 off).
    """

    def __init__(
        self,
        owner: EndpointOwner,
        name: str,
        plugin_dir: Path = PLUGIN_DIR,
        *,
        gateway: str,
        gateway6: str = "",
    ) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid plugin name {name!r}")
        self.owner = owner
        self.name = name
        self.socket_path = plugin_dir / f"{name}.sock"
        self.gateway, self.gateway6 = gateway, gateway6
        self._addresses: dict[str, tuple[str, str | None]] = {}
        """EndpointID -> addresses (IPv4, IPv6 or None), from CreateEndpoint until Join
        creates the endpoint."""
        self._lock = threading.Lock()
        self._server: _UnixServer | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None
        self.last_error = ""
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "/Plugin.Activate": lambda _: {"Implements": ["NetworkDriver", "IpamDriver"]},
            "/NetworkDriver.GetCapabilities": lambda _: {
                "Scope": "local",
                "ConnectivityScope": "local",
            },
            "/NetworkDriver.CreateNetwork": self._create_network,
            "/NetworkDriver.DeleteNetwork": _nothing,
            "/NetworkDriver.CreateEndpoint": self._create_endpoint,
            "/NetworkDriver.DeleteEndpoint": self._delete_endpoint,
            "/NetworkDriver.EndpointOperInfo": lambda _: {"Value": {}},
            "/NetworkDriver.Join": self._join,
            "/NetworkDriver.Leave": _nothing,
            "/NetworkDriver.DiscoverNew": _nothing,
            "/NetworkDriver.DiscoverDelete": _nothing,
            "/NetworkDriver.ProgramExternalConnectivity": _nothing,
            "/NetworkDriver.RevokeExternalConnectivity": _nothing,
            "/IpamDriver.GetCapabilities": lambda _: {
                "RequiresMACAddress": False,
                "RequiresRequestReplay": False,
            },
            "/IpamDriver.GetDefaultAddressSpaces": lambda _: {
                "LocalDefaultAddressSpace": LOCAL_SPACE,
                "GlobalDefaultAddressSpace": GLOBAL_SPACE,
            },
            "/IpamDriver.RequestPool": self._request_pool,
            "/IpamDriver.ReleasePool": _nothing,
            "/IpamDriver.RequestAddress": self._request_address,
            "/IpamDriver.ReleaseAddress": self._release_address,
        }

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        """Listen on the plugin socket and serve on a background thread."""
        if self._server is not None:
            return
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            if _answers(self.socket_path):
                raise PluginError(f"{self.socket_path} is served by another process")
            self.socket_path.unlink()  # a crashed agent's socket
        server = _UnixServer(str(self.socket_path), _Handler)
        server.plugin = self
        self._inode = self.socket_path.stat().st_ino
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"docker-plugin-{self.name}", daemon=True
        )
        self._thread.start()
        log.info("Docker network plugin %s on %s", self.name, self.socket_path)

    def stop(self) -> None:
        """Stop serving and remove the socket (only if it is still ours)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
        try:
            if self.socket_path.stat().st_ino == self._inode:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass

    def health(self) -> dict[str, Any]:
        """`cilia status` line: serving, and the socket on disk is this server's."""
        healthy, message = False, "not started"
        if self._server is not None and self._thread is not None and self._thread.is_alive():
            try:
                ours = self.socket_path.stat().st_ino == self._inode
            except FileNotFoundError:
                ours = False
            healthy = ours
            message = "serving" if ours else f"{self.socket_path} was removed or replaced"
            if healthy and self.last_error:
                message += f"; last error: {self.last_error}"
        return {
            "runtime": "docker-plugin",
            "endpoint": str(self.socket_path),
            "healthy": healthy,
            "message": message,
        }

    # -- requests ---------------------------------------------------------

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Status and JSON answer of one plugin call."""
        handler = self.handlers.get(path)
        if handler is None:
            return 404, {"Err": f"{path} is not implemented by the Cilia driver"}
        try:
            return 200, handler(body)
        except PluginError as exc:
            return 400, {"Err": str(exc)}
        except Exception as exc:  # the agent's error: Docker shows it, we keep it for status
            self.last_error = f"{path}: {exc}"
            log.exception("Docker plugin call %s failed", path)
            return 500, {"Err": f"cilia: {exc}"}

    def _need_ipv6(self) -> None:
        """Refuse IPv6 when the agent has it off."""
        if not self.gateway6:
            raise PluginError(IPV6_OFF)

    def _create_network(self, req: dict[str, Any]) -> dict[str, Any]:
        options = req.get("Options") or {}
        pools, pools6 = req.get("IPv4Data") or [], req.get("IPv6Data") or []
        if options.get("com.docker.network.enable_ipv6") or pools6:
            self._need_ipv6()
        wanted = [(p, POOL) for p in pools] + [(p, POOL6) for p in pools6]
        if not pools or any(p.get("Pool") != pool for p, pool in wanted):
            raise PluginError(f"use the Cilia IPAM driver too: --ipam-driver {self.name}")
        return {}

    def _create_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        iface = req.get("Interface") or {}
        address, address6 = iface.get("Address"), iface.get("AddressIPv6")
        if not address:
            raise PluginError(f"the endpoint has no address: use --ipam-driver {self.name}")
        with self._lock:
            self._addresses[req["EndpointID"]] = (
                _address(address),
                _address(address6) if address6 else None,
            )
        return {}

    def _join(self, req: dict[str, Any]) -> dict[str, Any]:
        eid = str(req["EndpointID"])
        with self._lock:
            addresses = self._addresses.get(eid)
        if addresses is None:
            raise PluginError(f"endpoint {eid} was not created through this driver")
        ipv4, ipv6 = addresses
        ifname = CONTAINER_PREFIX + eid[:12]
        view = self.owner.endpoint_put(
            EndpointRequest(
                container_id=container_id(eid),
                netns=req["SandboxKey"],
                interface_name=ifname,
                runtime="docker",
                ipv4=ipv4,
                ipv6=ipv6,
                peer_in_host=True,
            )
        )
        addressing = view["addressing"]
        gateway, gateway6 = str(addressing["gateway"]), str(addressing.get("gateway6", ""))
        routes = static_routes(addressing.get("routes", []), gateway, gateway6)
        return {
            "InterfaceName": {"SrcName": ifname, "DstPrefix": "eth"},
            "Gateway": gateway,
            **({"GatewayIPv6": gateway6} if gateway6 else {}),
            "StaticRoutes": routes,
            "DisableGatewayService": True,  # else Docker adds a docker_gwbridge leg
        }

    def _delete_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        eid = str(req["EndpointID"])
        self.owner.endpoint_remove(endpoint_key(eid))
        with self._lock:
            self._addresses.pop(eid, None)
        return {}

    def _request_pool(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("V6"):
            self._need_ipv6()
        if req.get("Pool") or req.get("SubPool"):
            raise PluginError("addresses come from the node's pod range: give no --subnet")
        if req.get("V6"):
            return {"PoolID": POOL_ID6, "Pool": POOL6, "Data": {}}
        return {"PoolID": POOL_ID, "Pool": POOL, "Data": {}}

    def _request_address(self, req: dict[str, Any]) -> dict[str, Any]:
        pool = req.get("PoolID")
        if pool not in (POOL_ID, POOL_ID6):
            raise PluginError(f"unknown pool {pool!r}")
        v6 = pool == POOL_ID6
        if v6:
            self._need_ipv6()
        options = req.get("Options") or {}
        if options.get("RequestAddressType") == GATEWAY_REQUEST:
            return {"Address": _host_prefix(self.gateway6 if v6 else self.gateway), "Data": {}}
        if req.get("Address"):
            raise PluginError("a fixed container address (--ip, --ip6) is not supported")
        ip = self.owner.ipam_allocate("ipv6" if v6 else "ipv4")
        return {"Address": _host_prefix(ip), "Data": {}}

    def _release_address(self, req: dict[str, Any]) -> dict[str, Any]:
        address = _address(str(req.get("Address", "")))
        if address and address not in (self.gateway, self.gateway6):
            self.owner.ipam_release(address)
        return {}


def _nothing(_: dict[str, Any]) -> dict[str, Any]:
    return {}


def _answers(path: Path) -> bool:
    """True when something accepts connections on the unix socket *path*."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                return False
            raise
    return True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    plugin: DockerNetworkPlugin

    def server_bind(self) -> None:
        old = os.umask(0o077)  # only root (dockerd) may talk to the plugin
        try:
            super().server_bind()
        finally:
            os.umask(old)


class _Handler(BaseHTTPRequestHandler):
    server: _UnixServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("a JSON object is expected")
        except ValueError as exc:
            status, answer = 400, {"Err": f"bad request body: {exc}"}
        else:
            status, answer = self.server.plugin.handle(self.path, body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:
        return "docker"  # a unix socket peer has no address

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("docker plugin: " + format, *args)
