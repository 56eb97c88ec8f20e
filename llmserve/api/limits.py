"""Request size limits: a body larger than the largest valid request is refused with 413,
headers larger than :data:`MAX_HEADER_BYTES` in total with 431.

The body is checked from ``Content-Length`` before anything is read, and counted while a chunked
body arrives, so a 10 MB body is never held in memory. Headers reach the app already parsed
(uvicorn's default httptools parser sets no size limit of its own), so the header check makes
the answer a clear 431 but does not bound what the parser buffered: put a reverse proxy in front,
or run uvicorn with h11, to bound that too.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Names plus values of all request headers (nginx's default is 4 buffers of 8 KB; h11's 16 KB).
MAX_HEADER_BYTES = 32 * 1024


def body_limit_for(max_prompt_chars: int) -> int:
    """Room for a prompt of the maximum length with worst-case JSON escaping, plus the rest."""
    return max_prompt_chars * 6 + 64 * 1024


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunked = False
        header_bytes = 0
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await _reject(
                        scope, send, 400, "invalid Content-Length header", "invalid_request"
                    )
                    return
                if length > self.limit:
                    await _too_large(scope, send, self.limit)
                    return
            elif name == b"transfer-encoding":
                chunked = True
        if header_bytes > MAX_HEADER_BYTES:
            detail = f"the request headers exceed {MAX_HEADER_BYTES} bytes"
            await _reject(scope, send, 431, detail, "headers_too_large")
            return
        if chunked:
            await self._counted(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body without Content-Length: count it as it arrives; answer 413 past the limit.

        The app then sees the client as gone (frameworks turn exceptions raised while reading
        a body into their own 400), and whatever it tries to send afterwards is dropped.
        """
        seen = 0
        started = rejected = False

        async def counting_receive() -> Message:
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    rejected = True
                    if not started:
                        await _too_large(scope, send, self.limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    await _reject(scope, send, 413, f"the request body exceeds {limit} bytes", "body_too_large")


async def _reject(scope: Scope, send: Send, status: int, detail: str, code: str) -> None:
    """A JSON error; in OpenAI's envelope on the OpenAI-compatible routes."""
    if scope["path"].startswith("/v1/"):
        payload: dict[str, object] = {
            "error": {
                "message": detail,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    else:
        payload = {"detail": detail, "code": code}
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
