"""``X-Request-ID`` on every response: echoed when the client sends a sane one.

The id is put in ``scope["state"]["request_id"]`` and in a context variable, so log lines
written while serving the request and the request-log row of its generation carry it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from random import getrandbits  # ids need to be unique, not secret: no syscall

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.logging_setup import request_id_var

#: Scope key of the unwrapped ``send`` (see ``api/sse.py``).
BODY_SEND = "llmserve.body_send"

_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,128}\Z")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
