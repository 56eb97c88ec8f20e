"""A fast Ollama double for the load harness: ``/api/chat`` and ``/api/generate``, cheap enough
not to limit it.

    .venv/bin/python benchmarks/_fast_double.py --tokens 64 --delay 0.02 [--model llama3.2]
        [--per-stream] [--tool-calls 1] [--tool-chunks each]

Prints its base URL (``http://127.0.0.1:PORT``) on stdout (one line), then serves until stdin
closes or SIGTERM. Same command line and output as the harness's former double process, so
``load.py`` starts either the same way.

Why not ``tests/fakes``' ``OllamaDouble``: that one is faithful and scriptable (validation,
recording, scripted errors), and costs ~1 ms of CPU per non-stream request and ~3 ms per streamed
64-token one (an ASGI app on uvicorn, one ``send`` and one sleep per token): on a 2-core machine
the double was the bottleneck. This one is an ``asyncio.Protocol`` (uvloop if importable) with
httptools' C parser; every answer is encoded once, the first time it is asked for (per path,
model name as sent, ``num_predict`` and offered tool names), so a zero-delay answer is one JSON
parse of the request, one lookup and one ``transport.write``. With a per-token delay the headers
and the first token go out together as soon as the request is read; after that one shared
``loop.call_at`` ticker (no task, no sleep) wakes every ``--delay`` seconds and writes the next
token of every stream in progress, like Ollama's runner, which decodes all parallel sequences in
one batch per step. One wake-up per step instead of one per stream and token cut the double's
CPU per streamed request at 20 ms/token by a third (c=16) to a half (c=64): a wake-up from idle
costs ~130 µs of CPU on the 2-core VM this was measured on. A stream's first gap is 0.5-1.5
steps (one on average), the others one step; the last token goes out with the final line.

Answers: ``--tokens`` chunks of ``" tok"`` each. On ``/api/generate`` a chunk is
``{"model","created_at","response":" tok","done":false}``; on ``/api/chat`` it is
``{"model","created_at","message":{"role":"assistant","content":" tok"},"done":false}``. A chat
request that offers ``tools`` (a non-empty list) is answered like a model that says something
and then calls tools: text chunks, then ``--tool-calls`` whole calls of the first offered tools
(one chunk per call with ``--tool-chunks each``, one chunk with all of them with ``together``),
in Ollama 0.17's form ``{"id":"call_…","function":{"index":N,"name":…,"arguments":{…}}}`` with
``"content":""``. The text chunks make up the rest of ``--tokens``, so every answer is
``--tokens`` chunks before the final line whatever the mode. The arguments are sample values
for the tool's declared properties (an ``enum``'s first value, else ``"Paris"`` for a string,
``1`` for an integer, ...); the ids are drawn once per encoded answer, so repeated answers
repeat them (Ollama's are random).

Body shapes, headers and chunking are those of Ollama (and of ``OllamaDouble``, whose encoders,
call ids and ``/api/tags`` entry it reuses): one chunked-encoding chunk per NDJSON line,
``application/x-ndjson``; ``stream:false`` is one ``Content-Length`` JSON object (chat: the
whole text and every call in ``message``). The final line has Ollama's counts
(``prompt_eval_count``, ``eval_count`` = chunks, durations; ``context`` on generate only).
Timestamps and durations are fixed at start-up (``created_at`` is the start time).

Also answered, so ``llmserve serve`` can start against it: ``GET``/``HEAD`` ``/``, ``/api/version``
and ``/api/tags``; ``POST /api/show`` gives the model's capabilities. ``options.num_predict``
below the chunk count shortens the answer (``done_reason: "length"``); an empty prompt (generate)
or no messages (chat) is a load (``keep_alive: 0``: unload) like Ollama's. The requests are not
validated beyond the JSON, the model and those fields (``OllamaDouble`` checks them like Ollama).
Anything else gets 404 ``{"error": ...}``. Keep-alive and pipelined requests are answered in
order on each connection; a client that leaves mid-stream is dropped from the ticker (or, for
``stream:false``, its timer is cancelled).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import sys
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httptools

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    _loads = json.loads

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.ollama_names import parse_model_name
from tests.fakes.ollama_records import DEFAULT_SIZE, ModelEntry
from tests.fakes.ollama_tools import call_id
from tests.fakes.ollama_wire import go_json, rfc3339

TOKEN = " tok"
PROMPT_EVAL_COUNT = 7  # OllamaDouble's default Script
JSON_TYPE = b"application/json; charset=utf-8"
TEXT_TYPE = b"text/plain; charset=utf-8"
TERMINATOR = b"0\r\n\r\n"
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}
UNLOAD = (0, 0.0, "0", "0s", "0m")
SAMPLE_VALUES = {"string": "Paris", "number": 1.5, "integer": 1, "boolean": True}

Piece = tuple[str, Any]  # ("text", " tok") or ("tools", [call, ...])


def chunk(data: bytes) -> bytes:
    """One chunked-encoding chunk (Go flushes one per NDJSON line)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = go_json({"error": message})


class Answer:
    """Every byte of one answer (one path, model name as sent, length and tools), encoded once.

    ``chunks[i]`` is the i-th streamed line as one chunked-encoding chunk; ``final_chunk`` the
    ``done`` line and the body's end; ``ndjson`` the whole streamed body; ``whole`` the
    ``stream: false`` body.
    """

    def __init__(
        self, chat: bool, model: str, pieces: list[Piece], reason: str, delay: float, created: str
    ) -> None:
        self.tokens = len(pieces)
        head = {"model": model, "created_at": created}
        token_ns = max(int(delay * 1e9), 20_000)
        metrics = {
            "total_duration": 0,
            "load_duration": 250_000,
            "prompt_eval_count": PROMPT_EVAL_COUNT,
            "prompt_eval_duration": 2_000_000,
            "eval_count": self.tokens,
            "eval_duration": max(self.tokens * token_ns, 1),
        }
        metrics["total_duration"] = 300_000 + sum(
            v for k, v in metrics.items() if k.endswith("duration")
        )
        encoded: dict[str, bytes] = {}  # identical text chunks share their bytes

        def line(piece: Piece) -> bytes:
            kind, value = piece
            if kind == "text" and value in encoded:
                return encoded[value]
            if not chat:
                body = {**head, "response": value, "done": False}
            elif kind == "text":
                body = {**head, "message": {"role": "assistant", "content": value}, "done": False}
            else:
                message = {"role": "assistant", "content": "", "tool_calls": value}
                body = {**head, "message": message, "done": False}
            out = chunk(go_json(body) + b"\n")
            if kind == "text":
                encoded[value] = out
            return out

        def final(whole: bool) -> bytes:
            text = "".join(v for k, v in pieces if k == "text") if whole else ""
            if not chat:
                context = list(range(1, PROMPT_EVAL_COUNT + self.tokens + 1))
                done = {**head, "response": text, "done": True, "done_reason": reason}
                return go_json({**done, "context": context, **metrics})
            message: dict[str, Any] = {"role": "assistant", "content": text}
            calls = [call for k, v in pieces if k == "tools" for call in v]
            if whole and calls:
                message["tool_calls"] = calls
            done = {**head, "message": message, "done_reason": reason, "done": True}
            return go_json({**done, **metrics})

        self.chunks = [line(piece) for piece in pieces]
        self.final_chunk = chunk(final(False) + b"\n") + TERMINATOR
        self.ndjson = b"".join(self.chunks) + self.final_chunk
        self.whole = final(True)


def sample_arguments(tool: Any) -> dict[str, Any]:
    """Arguments a model might pass: a sample value per property the tool declares."""
    function = tool.get("function") if isinstance(tool, dict) else None
    parameters = function.get("parameters") if isinstance(function, dict) else None
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(properties, dict):
        return {}
    return {name: sample_value(spec) for name, spec in properties.items()}


def sample_value(spec: Any) -> Any:
    if not isinstance(spec, dict):
        return None
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    return SAMPLE_VALUES.get(spec.get("type"))


def tool_name(tool: Any) -> str | None:
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) and name else None


class Double:
    """What every connection shares: the installed model, the encoded answers, the Date."""

    def __init__(
        self,
        model: str,
        tokens: int,
        delay: float,
        per_stream: bool = False,
        tool_calls: int = 1,
        tool_chunks: str = "each",
    ) -> None:
        self.tokens = tokens
        self.delay = delay
        self.per_stream = per_stream  # one timer per stream instead of the shared ticker
        self.tool_calls = tool_calls
        self.tool_chunks = tool_chunks
        self.created = rfc3339()
        parsed = parse_model_name(model)
        if parsed is None:
            raise SystemExit(f"invalid model name {model!r}")
        self.entry = ModelEntry.build(parsed, size=DEFAULT_SIZE, modified_at=self.created)
        self.answers: dict[tuple[bool, Any, int, tuple[str, ...]], Answer] = {}
        self.static = {
            b"/": (TEXT_TYPE, b"Ollama is running"),
            b"/api/version": (JSON_TYPE, b'{"version":"0.12.0"}'),
            b"/api/tags": (JSON_TYPE, go_json({"models": [self.entry.tags_item()]})),
        }
        self.show = go_json(
            {
                "details": self.entry.details(),
                "capabilities": list(self.entry.capabilities),
                "modified_at": self.created,
            }
        )
        self.date = b""
        self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self.streams: dict[Connection, None] = {}  # delayed streams in progress
        self.ticker: asyncio.TimerHandle | None = None
        self.next_tick = 0.0

    def tick_date(self) -> None:
        """Refresh the ``Date`` header once a second (no per-request clock formatting)."""
        self.date = formatdate(usegmt=True).encode()
        self.loop.call_later(1.0, self.tick_date)

    def join(self, conn: Connection) -> None:
        """Add a stream to the shared ticker (started on demand)."""
        self.streams[conn] = None
        if self.ticker is None:
            self.next_tick = self.loop.time() + self.delay
            self.ticker = self.loop.call_at(self.next_tick, self.tick)

    def tick(self) -> None:
        """One decoding step: the next token of every stream in progress, in one wake-up.

        Like Ollama's runner, which decodes all parallel sequences in one batch per step. A
        stream that got its first token less than half a step ago waits for the next tick, so
        its first gap is between 0.5 and 1.5 steps (one step on average), the others one step.
        """
        now = self.loop.time()
        joined_before = now - self.delay / 2
        for conn in list(self.streams):
            conn.next_token(joined_before)
        if not self.streams:
            self.ticker = None
            return
        self.next_tick = max(self.next_tick + self.delay, now)  # late: no catch-up burst
        self.ticker = self.loop.call_at(self.next_tick, self.tick)

    def check_model(self, model: Any) -> None:
        if not isinstance(model, str) or not model:
            raise Refused(400, "model is required")
        parsed = parse_model_name(model)
        if parsed is None:
            raise Refused(400, "invalid model name")
        if parsed.key != self.entry.name.key:
            raise Refused(404, f"model '{model}' not found")

    def answer(self, chat: bool, req: dict[str, Any]) -> Answer:
        """The answer to a generate (``chat`` false) or chat request; built on first use."""
        model, options, tools = req.get("model"), req.get("options"), req.get("tools")
        limit = self.tokens
        if isinstance(options, dict):
            n = options.get("num_predict")
            if isinstance(n, int | float) and not isinstance(n, bool) and 0 < int(n) < limit:
                limit = int(n)
        if not isinstance(model, str):
            self.check_model(model)  # refused: no unhashable cache key
        offered = tools if chat and isinstance(tools, list) else []
        called = [tool for tool in offered if tool_name(tool)][: self.tool_calls]
        names = tuple(str(tool_name(tool)) for tool in called)
        key = (chat, model, limit, names)
        found = self.answers.get(key)
        if found is None:
            self.check_model(model)
            pieces = self.pieces(called)
            reason = "stop" if limit >= len(pieces) else "length"
            found = Answer(chat, model, pieces[:limit], reason, self.delay, self.created)
            self.answers[key] = found
        return found

    def pieces(self, tools: list[Any]) -> list[Piece]:
        """Text, then the calls of ``tools`` (whole, in the chunks ``--tool-chunks`` says):
        ``--tokens`` chunks in all."""
        calls = [
            {"id": call_id(), "function": {"index": i, "name": name, "arguments": args}}
            for i, (name, args) in enumerate(
                (tool_name(tool), sample_arguments(tool)) for tool in tools
            )
        ]
        groups = [calls] if calls and self.tool_chunks == "together" else [[c] for c in calls]
        text: list[Piece] = [("text", TOKEN)] * max(self.tokens - len(groups), 0)
        return text + [("tools", group) for group in groups]


class Stream:
    """A delayed answer in progress: driven by the shared ticker, or one timer (non-stream)."""

    __slots__ = ("answer", "handle", "keep", "sent", "started")

    def __init__(self, answer: Answer, keep: bool, started: float) -> None:
        self.answer = answer
        self.keep = keep
        self.sent = 0
        self.started = started
        self.handle: asyncio.TimerHandle | None = None


class Connection(asyncio.Protocol):
    """One client connection: one request parser, answers written in request order."""

    def __init__(self, double: Double) -> None:
        self.double = double
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.method = b""
        self.body: list[bytes] = []
        self.stream: Stream | None = None  # a delayed answer in progress
        self.pending: collections.deque[tuple[bytes, bytes, bytes, bool]] = collections.deque()
        self.closing = False

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.closing = True
            if self.stream is None:
                self.respond(400, JSON_TYPE, go_json({"error": "malformed HTTP request"}), False)
            else:
                self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.stream is not None and self.stream.handle is not None:
            self.stream.handle.cancel()
        self.double.streams.pop(self, None)
        self.stream = None
        self.pending.clear()

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.method = self.parser.get_method()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        request = (self.method, self.url, b"".join(self.body), self.parser.should_keep_alive())
        if self.stream is not None or self.pending:
            self.pending.append(request)
        else:
            self.handle(*request)

    # -- answering ------------------------------------------------------------------------

    def handle(self, method: bytes, url: bytes, body: bytes, keep: bool) -> None:
        path = url.split(b"?", 1)[0]
        if method == b"POST":
            if path == b"/api/chat":
                self.generate(True, body, keep)
                return
            if path == b"/api/generate":
                self.generate(False, body, keep)
                return
            if path == b"/api/show":
                self.respond(200, JSON_TYPE, self.double.show, keep)
                return
        static = self.double.static.get(path)
        if static is not None and method in (b"GET", b"HEAD"):
            self.respond(200, static[0], static[1], keep, head_only=method == b"HEAD")
            return
        message = f"{method.decode('latin-1')} {path.decode('latin-1')} not found"
        self.respond(404, JSON_TYPE, go_json({"error": message}), keep)

    def respond(
        self, status: int, ctype: bytes, body: bytes, keep: bool, head_only: bool = False
    ) -> None:
        """A whole response with a ``Content-Length`` (headers in Go's order: sorted)."""
        out = b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nContent-Type: %s\r\nDate: %s\r\n%s\r\n" % (
            status,
            REASONS[status],
            len(body),
            ctype,
            self.double.date,
            b"" if keep else b"Connection: close\r\n",
        )
        self.transport.write(out if head_only else out + body)  # type: ignore[union-attr]
        if not keep:
            self.end_connection()

    def chunked_head(self, keep: bool) -> bytes:
        return b"%sDate: %s\r\nTransfer-Encoding: chunked\r\n%s\r\n" % (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n",
            self.double.date,
            b"" if keep else b"Connection: close\r\n",
        )

    def generate(self, chat: bool, body: bytes, keep: bool) -> None:
        """``/api/chat`` (``chat``) or ``/api/generate``: a load, or the encoded answer."""
        try:
            req = _loads(body) if body else None
            if not isinstance(req, dict):
                raise Refused(400, "missing request body" if not body else "invalid request body")
            answer = self.double.answer(chat, req)
        except Refused as exc:
            self.respond(exc.status, JSON_TYPE, exc.body, keep)
            return
        except ValueError:
            self.respond(400, JSON_TYPE, go_json({"error": "invalid JSON body"}), keep)
            return
        stream = req.get("stream") is not False
        if not (req.get("messages") if chat else req.get("prompt")):
            self.load(chat, req, keep)
            return
        delay = self.double.delay
        if delay <= 0:
            if stream:
                self.transport.write(self.chunked_head(keep) + answer.ndjson)  # type: ignore
                if not keep:
                    self.end_connection()
            else:
                self.respond(200, JSON_TYPE, answer.whole, keep)
            return
        run = Stream(answer, keep, self.loop.time())
        self.stream = run
        if not stream:  # the whole answer when the stream's last token would be due
            run.handle = self.loop.call_later(delay * max(answer.tokens - 1, 0), self.finish_whole)
            return
        if answer.tokens <= 1:  # nothing to wait for
            self.transport.write(self.chunked_head(keep) + answer.ndjson)  # type: ignore
            self.stream_done()
            return
        run.sent = 1
        self.transport.write(self.chunked_head(keep) + answer.chunks[0])  # type: ignore
        if self.double.per_stream:
            run.handle = self.loop.call_at(run.started + delay, self.own_tick)
        else:
            self.double.join(self)

    def load(self, chat: bool, req: dict[str, Any], keep: bool) -> None:
        """No prompt (generate) or no messages (chat): load the model, or unload it."""
        reason = "unload" if req.get("keep_alive", 1) in UNLOAD else "load"
        done: dict[str, Any] = {"model": req["model"], "created_at": self.double.created}
        if chat:
            done.update(message={"role": "assistant", "content": ""}, done_reason=reason)
            done["done"] = True
        else:
            done.update(response="", done=True, done_reason=reason)
        self.respond(200, JSON_TYPE, go_json(done), keep)

    def own_tick(self) -> None:
        """``--per-stream``: this stream's own timer, one token every ``delay`` from its start."""
        run = self.stream
        if run is None:
            return
        self.next_token(float("inf"))
        if self.stream is run:
            due = run.started + run.sent * self.double.delay
            run.handle = self.loop.call_at(due, self.own_tick)

    def next_token(self, joined_before: float) -> None:
        """Called by the ticker: write the next token (the last one with the final line)."""
        run = self.stream
        if run is None or self.transport is None or self.transport.is_closing():
            self.double.streams.pop(self, None)
            return
        if run.sent == 1 and run.started > joined_before:
            return  # the first token went out less than half a step ago
        answer = run.answer
        run.sent += 1
        if run.sent < answer.tokens:
            self.transport.write(answer.chunks[run.sent - 1])
            return
        self.transport.write(answer.chunks[-1] + answer.final_chunk)
        self.double.streams.pop(self, None)
        self.stream_done()

    def finish_whole(self) -> None:
        run = self.stream
        if run is None or self.transport is None or self.transport.is_closing():
            return
        self.stream = None
        self.respond(200, JSON_TYPE, run.answer.whole, run.keep)
        self.drain()

    def stream_done(self) -> None:
        keep = self.stream is not None and self.stream.keep
        self.stream = None
        if not keep:
            self.end_connection()
            return
        self.drain()

    def drain(self) -> None:
        """Answer requests that arrived while a delayed answer was in progress."""
        while self.pending and self.stream is None and not self.closing:
            self.handle(*self.pending.popleft())

    def end_connection(self) -> None:
        self.closing = True
        self.pending.clear()
        self.transport.close()  # type: ignore[union-attr]


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    double = Double(
        args.model, args.tokens, args.delay, args.per_stream, args.tool_calls, args.tool_chunks
    )
    double.tick_date()
    server = await loop.create_server(
        lambda: Connection(double), "127.0.0.1", args.port, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    fd = sys.stdin.fileno()

    def stdin_readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            stop.set()

    loop.add_reader(fd, stdin_readable)
    print(f"http://127.0.0.1:{port}", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3.2")
    parser.add_argument("--tokens", type=int, default=64, help="chunks per answer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument(
        "--per-stream",
        action="store_true",
        help="one timer per stream (tokens of different streams arrive independently) "
        "instead of one shared decoding step for all streams",
    )
    parser.add_argument(
        "--tool-calls",
        type=int,
        default=1,
        choices=(1, 2),
        help="calls in a chat answer that offers tools (of the first offered tools)",
    )
    parser.add_argument(
        "--tool-chunks",
        default="each",
        choices=("each", "together"),
        help="one chunk per call, or one chunk with all calls",
    )
    args = parser.parse_args()
    if uvloop is not None:
        uvloop.install()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
