"""Request size limits: a body larger than the largest valid request is refused with 413,
headers larger than :data:`MAX_HEADER_BYTES` in total with 431.

The body is checked from ``Content-Length`` before anything is read, and counted while a chunked
body arrives, so a 10 MB body is never held in memory. Headers reach the app already parsed
(uvicorn's default httptools parser sets no size limit of its own), so the header check makes
the answer a clear 431 but does not bound what the parser buffered: put a reverse proxy in front,
or run uvicorn with h11, to bound that too.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve import errors
from llmserve.api.errors import send_error

#: Names plus values of all request headers (nginx's default is 4 buffers of 8 KB; h11's 16 KB).
MAX_HEADER_BYTES = 32 * 1024


#: Routes whose messages may carry images: their bodies may also hold one image of the
#: largest size (MAX_IMAGE_BYTES, base64).
IMAGE_PATHS = frozenset(
    {"/api/v1/chat", "/v1/chat/completions", "/api/chat", "/api/generate"}
    | {"/v1/responses", "/v1/messages", "/v1/messages/count_tokens"}
)


def body_limit_for(max_prompt_chars: int) -> int:
    """Room for a prompt of the maximum length with worst-case JSON escaping, plus the rest."""
    return max_prompt_chars * 6 + 64 * 1024


def image_body_limit_for(max_prompt_chars: int, max_image_bytes: int) -> int:
    """The same, plus one image of ``max_image_bytes`` in base64."""
    return body_limit_for(max_prompt_chars) + (max_image_bytes + 2) // 3 * 4


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int, image_limit: int | None = None) -> None:
        self.app = app
        self.limit = limit
        self.image_limit = max(limit, image_limit or 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.image_limit if scope["path"] in IMAGE_PATHS else self.limit
        chunked = False
        header_bytes = 0
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    error = errors.InvalidRequestError("invalid Content-Length header")
                    await _reject(scope, send, error)
                    return
                if length > limit:
                    await _too_large(scope, send, limit)
                    return
            elif name == b"transfer-encoding":
                chunked = True
        if header_bytes > MAX_HEADER_BYTES:
            detail = f"the request headers exceed {MAX_HEADER_BYTES} bytes"
            await _reject(scope, send, errors.HeadersTooLargeError(detail))
            return
        if chunked:
            await self._counted(scope, receive, send, limit)
        else:
            await self.app(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
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
                if seen > limit:
                    rejected = True
                    if not started:
                        await _too_large(scope, send, limit)
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
    await _reject(scope, send, errors.BodyTooLargeError(f"the request body exceeds {limit} bytes"))


async def _reject(scope: Scope, send: Send, error: errors.LlmserveError) -> None:
    """The error, and the connection closed: the rest of the request is never read."""
    await send_error(scope, send, error, [(b"connection", b"close")])
