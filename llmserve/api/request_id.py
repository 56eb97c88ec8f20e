"""``X-Request-ID`` on every response: echoed when the client sends a sane one.

The id is put in ``scope["state"]["request_id"]`` and in a context variable, so log lines
written while serving the request and the request-log row of its generation carry it.

The middleware also publishes the ``send`` it was given under ``scope[BODY_SEND]``: the
generation routes send their response's start through every middleware beneath this one (the
wrapped ``send``) and their body straight to ``scope[BODY_SEND]``, one call per chunk instead of
one per layer. That is only right while no layer beneath this one touches a body, so it is
published only when every layer between this middleware and the routes is known to pass bodies
through unchanged (checked once, when the middleware stack is built). A middleware added around
the app (``app.add_middleware`` after ``create_app``) wraps this one and sees every body anyway.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Iterable
from random import getrandbits  # ids need to be unique, not secret: no syscall

from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.logging_setup import request_id_var

log = logging.getLogger(__name__)

#: Scope key of the unwrapped ``send`` (see the module's docstring and ``api/sse.py``).
BODY_SEND = "llmserve.body_send"

#: The framework's own layers beneath the user's middlewares: they wrap ``send`` only to note
#: that a response has started.
_FRAMEWORK_LAYERS: tuple[type, ...] = (ExceptionMiddleware, AsyncExitStackMiddleware)

_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,128}\Z")


def unknown_body_layers(app: ASGIApp, transparent: Iterable[type]) -> list[str]:
    """The layers between ``app`` and the router whose class is not in ``transparent`` (nor one
    of the framework's own): they might rewrite a body, so bodies must go through them."""
    known = (*transparent, *_FRAMEWORK_LAYERS)
    unknown: list[str] = []
    layer: object = app
    while not isinstance(layer, Router):
        if type(layer) not in known:
            unknown.append(type(layer).__name__)
        inner = getattr(layer, "app", None)
        if inner is None:  # not a middleware: the routes are out of sight
            return unknown or [type(layer).__name__]
        layer = inner
    return unknown


class RequestIdMiddleware:
    """``passes_bodies_through``: the middleware classes added beneath this one that only look
    at a response's start (their bodies may skip them; see the module's docstring)."""

    def __init__(self, app: ASGIApp, passes_bodies_through: Iterable[type] = ()) -> None:
        self.app = app
        unknown = unknown_body_layers(app, passes_bodies_through)
        #: Whether streams send their bodies beneath the middlewares (``scope[BODY_SEND]``).
        self.publishes_body_send = not unknown
        if unknown:
            log.warning(
                "%s beneath RequestIdMiddleware may rewrite response bodies: every body goes "
                "through every middleware (slower streams)",
                ", ".join(unknown),
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = (
            raw.decode() if raw is not None and _SANE.match(raw) else f"{getrandbits(128):032x}"
        )
        scope.setdefault("state", {})["request_id"] = request_id
        # The send beneath every wrapper: once a response has started (through the wrapped
        # send, which is all the wrappers look at), a stream sends its body here directly.
        if self.publishes_body_send:
            scope[BODY_SEND] = send
        header = (b"x-request-id", request_id.encode())

        def send_with_id(message: Message) -> Awaitable[None]:
            # A plain function returning send's awaitable: no coroutine of its own per message
            # (an SSE stream sends one message per token).
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            return send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
