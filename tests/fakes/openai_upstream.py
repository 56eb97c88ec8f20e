"""A stand-in for an OpenAI-compatible server that reports its stop strings the way vLLM does.

``GET /v1/models`` lists one model; ``POST /v1/chat/completions`` streams a fixed ``answer``
word by word, as chunks of ``choices[0].delta.content``, then a last chunk with
``finish_reason`` and vLLM's ``stop_reason``: the stop string that matched (the answer is cut
before it, as vLLM cuts it), or null when none did (the end of the answer stands for the end of
sequence). ``max_tokens`` counts words: reached first, it ends with ``length``. With
``stream_options.include_usage`` a usage chunk follows, then ``data: [DONE]``. Each request
body is kept in ``requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

HOST = "127.0.0.1"

Scope = dict[str, Any]
Message = dict[str, Any]


class OpenAIUpstream:
    """One fake server on a free port (``running()``), answering with ``answer``."""

    def __init__(self, model: str = "vllm-model", answer: str = "One, two, three.") -> None:
        self.model = model
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    @contextlib.contextmanager
    def running(cls, **options: Any) -> Iterator[OpenAIUpstream]:
        upstream = cls(**options)
        upstream._start()
        try:
            yield upstream
        finally:
            upstream._stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        assert self._server is not None and self._server.started
        port = int(self._server.servers[0].sockets[0].getsockname()[1])
        return f"http://{HOST}:{port}/v1"

    # -- what it answers --------------------------------------------------------------------

    def completion(self, body: dict[str, Any]) -> tuple[list[str], str, str | None]:
        """The content pieces, ``finish_reason`` and ``stop_reason`` for a request body."""
        stop = body.get("stop") or []
        stops = [stop] if isinstance(stop, str) else list(stop)
        limit = body.get("max_tokens")
        text = ""
        for count, word in enumerate(_words(self.answer)):
            if limit is not None and count >= limit:
                return _words(text), "length", None
            text += word
            # Like vLLM: after each token, the first stop string (in the request's order) that
            # now appears ends the answer, which is cut before it.
            for candidate in stops:
                if candidate and (at := text.find(candidate)) >= 0:
                    return _words(text[:at]), "stop", candidate
        return _words(text), "stop", None

    def _chunk(self, delta: dict[str, Any], finish: str | None, stop: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "stop_reason": stop}
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message: Message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET" and scope["path"] == "/v1/models":
            listed = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            await _answer(send, 200, b"application/json", json.dumps(listed).encode())
            return
        if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            await _answer(send, 404, b"application/json", b'{"detail": "Not Found"}')
            return
        body = json.loads(raw)
        self.requests.append(body)
        pieces, finish, stop = self.completion(body)
        events = [self._chunk({"role": "assistant", "content": ""}, None, None)]
        events += [self._chunk({"content": piece}, None, None) for piece in pieces]
        events.append(self._chunk({}, finish, stop))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 5, "completion_tokens": len(pieces)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            tail = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": []}
            events.append(b"data: " + json.dumps(tail | {"usage": usage}).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        await _answer(send, 200, b"text/event-stream", b"".join(events))

    # -- lifecycle --------------------------------------------------------------------------

    def _start(self, timeout: float = 10.0) -> None:
        config = uvicorn.Config(
            self,
            host=HOST,
            port=0,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._server.serve(),), name="openai-upstream", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake OpenAI-compatible server did not start")
            time.sleep(0.005)

    def _stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)


async def _answer(send: Any, status: int, kind: bytes, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]}
    )
    await send({"type": "http.response.body", "body": body})


def _words(text: str) -> list[str]:
    """The pieces the answer streams as: each word with the blanks after it."""
    return re.findall(r"\S+\s*", text)
