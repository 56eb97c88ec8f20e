"""The Ollama double as a raw ASGI application: routing like Gin, recording, host check."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from tests.fakes.ollama_admin import (
    handle_copy,
    handle_delete,
    handle_ps,
    handle_pull,
    handle_root,
    handle_show,
    handle_tags,
    handle_version,
)
from tests.fakes.ollama_chat import handle_chat
from tests.fakes.ollama_create import handle_create
from tests.fakes.ollama_decode import RequestError
from tests.fakes.ollama_embed import handle_embed, handle_embeddings
from tests.fakes.ollama_generate import handle_generate
from tests.fakes.ollama_records import RecordedRequest
from tests.fakes.ollama_state import DoubleState
from tests.fakes.ollama_wire import GIN_TEXT_TYPE, Exchange, Receive, Scope, Send

logger = logging.getLogger(__name__)

Handler = Callable[[DoubleState, Exchange], Awaitable[None]]

ROUTES: dict[str, dict[str, Handler]] = {
    "/": {"GET": handle_root, "HEAD": handle_root},
    "/api/version": {"GET": handle_version, "HEAD": handle_version},
    "/api/tags": {"GET": handle_tags, "HEAD": handle_tags},
    "/api/ps": {"GET": handle_ps},
    "/api/generate": {"POST": handle_generate},
    "/api/chat": {"POST": handle_chat},
    "/api/embed": {"POST": handle_embed},
    "/api/embeddings": {"POST": handle_embeddings},
    "/api/show": {"POST": handle_show},
    "/api/pull": {"POST": handle_pull},
    "/api/delete": {"DELETE": handle_delete},
    "/api/copy": {"POST": handle_copy},
    "/api/create": {"POST": handle_create},
}


def host_allowed(host_header: str) -> bool:
    """Ollama's DNS-rebinding guard for a loopback listener (``OLLAMA_HOST``)."""
    host = host_header.lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return address.is_loopback or address.is_private or address.is_unspecified
    if host in ("", "localhost", socket.gethostname().lower()):
        return True
    return host.endswith((".localhost", ".local", ".internal"))


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


class OllamaApp:
    """ASGI callable serving :data:`ROUTES` from a :class:`DoubleState`.

    It keeps the live exchanges so :meth:`kill_all` can stop every in-flight answer at once
    (shutdown, ``set_down``).
    """

    def __init__(self, state: DoubleState) -> None:
        self.state = state
        self.live: set[Exchange] = set()
        self.refusing = False

    def kill_all(self) -> None:
        """Interrupt every in-flight exchange; each handler then cuts its connection."""
        for exchange in list(self.live):
            exchange.kill()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        ex = Exchange(scope, receive, send)
        self.live.add(ex)
        if self.refusing:
            ex.kill()
        try:
            await ex.read_body()
            self.state.record_request(
                RecordedRequest(
                    method=ex.method,
                    path=ex.path,
                    query=ex.query,
                    headers=dict(ex.headers),
                    json=_json_or_none(ex.body),
                    body=ex.body,
                )
            )
            if ex.killed:
                await ex.abort()
            elif not ex.gone:
                await self._dispatch(ex)
        finally:
            self.live.discard(ex)
            await ex.close()

    async def _dispatch(self, ex: Exchange) -> None:
        if self.state.host_check and not host_allowed(ex.headers.get("host", "")):
            await ex.respond(403, b"", None)
            return
        methods = ROUTES.get(ex.path)
        if methods is None:
            await ex.respond(404, b"404 page not found", GIN_TEXT_TYPE)
            return
        handler = methods.get(ex.method)
        if handler is None:
            await ex.respond(405, b"405 method not allowed", GIN_TEXT_TYPE)
            return
        try:
            await handler(self.state, ex)
        except RequestError as exc:
            if ex.started:  # pragma: no cover - handlers validate before streaming
                logger.error("request error after the response started: %s", exc.message)
                await ex.abort()
            else:
                await ex.error(exc.status, exc.message)
