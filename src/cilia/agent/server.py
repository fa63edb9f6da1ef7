"""Run the agent in the foreground: datapath, controllers and the API socket."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

from cilia.agent.api import create_app
from cilia.agent.clean_state import clean_state
from cilia.agent.cleanup import STARTED_BY_VARIABLE
from cilia.agent.config import AgentConfig
from cilia.agent.daemon import Agent
from cilia.agent.errors import AgentError
from cilia.datapath import bpffs
from cilia.k8s.strict_yaml import ManifestError, load_json

log = logging.getLogger("cilia.agent")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _is_json(content_type: bytes | None) -> bool:
    """Whether FastAPI decodes a body of this type as JSON (also when the type is absent)."""
    if not content_type:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


class RequestLimits:
    """ASGI middleware bounding what a request may cost before the API sees it.

    A body over `max_bytes` is answered 413 with a JSON error: at once when its
    Content-Length says so (nothing of it is read), else as soon as the bytes received
    (chunked transfer) pass the limit; the connection is then closed. A JSON body is
    decoded strictly (`strict_yaml.load_json`: UTF-8, no NUL, no duplicate keys,
    nesting at most `max_depth`) and refused with 400 otherwise. The body is held in
    memory only up to the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def _refuse(self, send: Send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if status == 413:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _too_large(self) -> str:
        return (
            f"request body larger than {self.max_bytes} bytes "
            "(limit max_request_body_bytes, CILIA_MAX_REQUEST_BODY_BYTES)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)  # no body; streamed answers untouched
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, 413, self._too_large())
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                del body[:]
                await self._refuse(send, 413, self._too_large())
                return
            if not message.get("more_body", False):
                break
        data = bytes(body)
        del body[:]
        if data and _is_json(headers.get(b"content-type")):
            try:
                load_json(data, "request body", self.max_depth)
            except ManifestError as exc:
                await self._refuse(send, 400, str(exc))
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # disconnect, for streaming answers
            replayed = True
            return {"type": "http.request", "body": data, "more_body": False}

        await self.app(scope, replay, send)


def run_agent(config: AgentConfig, log_level: str = "info") -> None:
    """Start the agent and serve its API until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Envoy admin call
    if os.geteuid() != 0:
        raise SystemExit("cilia agent must run as root (it programs the kernel)")
    # Every process the agent starts (containers, Envoy) inherits these, which is how
    # `cilia down` finds them even after a crash. The second is never in a user's
    # shell (which may export CILIA_NAME_PREFIX): its other children are not ours.
    os.environ["CILIA_NAME_PREFIX"] = config.name_prefix
    os.environ[STARTED_BY_VARIABLE] = config.name_prefix
    try:
        pins = bpffs.pin_dir(config.bpf_dir, config.host_proc)
    except bpffs.BpffsError as exc:
        raise SystemExit(f"cilia agent: {exc}") from None
    if pins != config.bpf_dir:
        config = config.model_copy(update={"bpf_dir": pins})
        log.info("own mount namespace: pinning into the host's bpffs at %s", config.bpf_dir)
    if config.clean_state:
        try:
            clean_state(config)
        except AgentError as exc:
            raise SystemExit(str(exc)) from None
    agent = Agent(config)
    agent.start()
    sock = config.socket_path
    sock.unlink(missing_ok=True)
    server = uvicorn.Server(
        uvicorn.Config(
            RequestLimits(
                create_app(agent),
                max_bytes=config.max_request_body_bytes,
                max_depth=config.max_nesting_depth,
            ),
            uds=str(sock),
            log_level="warning",
            lifespan="off",
        )
    )
    os.umask(0o077)  # the socket is root-only: it controls the node's network policy
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with the default
    # handler that would end the process before the agent stops its proxies.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        agent.stop()
        sock.unlink(missing_ok=True)
        log.info("agent stopped; pods and enforcement stay in place")
