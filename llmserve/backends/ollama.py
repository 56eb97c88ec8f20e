"""The Ollama backend: the only module that knows Ollama's wire format.

Generations, the hot path, go through a lean keep-alive HTTP/1.1 pool (``_http1``); every
other call (tags, pull, delete, warm-up) through the runtime's shared ``httpx.AsyncClient``.
Transport failures and Ollama's ``{"error": …}`` bodies are translated here, once, into
:mod:`llmserve.errors` types.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import orjson

from llmserve import __version__, errors
from llmserve.backends import _http1
from llmserve.backends._tools import (
    ForcedToolStream,
    finished,
    forced_messages,
    forced_schema,
    parse_arguments,
)
from llmserve.backends.base import GenerationStream, PrefetchingStream
from llmserve.domain import (
    Embeddings,
    GenerationRequest,
    GenerationResult,
    Message,
    ModelCard,
    ModelInfo,
    PullProgress,
    RunningModel,
    StreamEvent,
    Thinking,
    ToolCall,
    ToolCallDelta,
    Usage,
    new_call_id,
)

log = logging.getLogger(__name__)

_MAX_ERROR_BODY = 64 * 1024
#: What Ollama names when a model lacks a capability (``"x" does not support tools``).
_CAPABILITIES = frozenset(
    {"chat", "generate", "completion", "tools", "thinking", "insert", "vision", "embedding"}
)
_CAPABILITIES_TTL_S = 60.0


class OllamaBackend:
    """Talks to one Ollama server through ``client`` (whose ``base_url`` is that server)."""

    name = "ollama"
    max_concurrency: int | None = None

    def __init__(
        self,
        client: httpx.AsyncClient,
        built_in_model: str,
        *,
        first_token_timeout_s: float = 300.0,
        idle_timeout_s: float = 60.0,
        total_timeout_s: float = 900.0,
    ) -> None:
        self._client = client
        self._built_in_model = built_in_model
        self._first_token_timeout_s = first_token_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._total_timeout_s = total_timeout_s
        self._capabilities: dict[str, tuple[frozenset[str] | None, float]] = {}
        self._pool = _http1.Http1Pool(
            str(client.base_url),
            connect_timeout=client.timeout.connect or 30.0,
            user_agent=f"llmserve/{__version__}",
        )

    @property
    def built_in_model(self) -> str:
        return self._built_in_model

    @property
    def base_url(self) -> str:
        return str(self._client.base_url).rstrip("/")

    async def start(self) -> None:
        """Nothing to learn: the built-in model comes from the settings."""

    # -- generation -------------------------------------------------------------------------

    async def open_generation(self, model: str, request: GenerationRequest) -> GenerationStream:
        if any(message.images for message in request.messages):
            await self._require(model, "vision", "images")
        forced = forced_schema(request)
        extras = request.ollama
        generate = extras is not None and extras.endpoint == "generate"
        if generate:
            path, payload = "/api/generate", _dumps(generate_body(model, request))
        else:
            path, payload = "/api/chat", _dumps(chat_body(model, request, forced))
        try:
            response = await self._pool.post_json(path, payload, wait_s=self._first_token_timeout_s)
        except _http1.UpstreamError as exc:
            raise translate_transport_error(exc, self.base_url, started=False) from None
        if response.status != 200:
            try:
                raw = await response.read(_MAX_ERROR_BODY, self._idle_timeout_s)
            except _http1.UpstreamError:
                raw = b""
            finally:
                await response.aclose()
            raise self._error(response.status, raw, model)
        stream = OllamaStream(
            response,
            idle_timeout_s=self._idle_timeout_s,
            deadline=time.monotonic() + self._total_timeout_s,
            generate=generate,
            thinking=extras is not None,
        )
        try:
            await stream.prefetch()
        except BaseException:
            await stream.aclose()
            raise
        return stream if forced is None else ForcedToolStream(stream, request)

    async def embed(
        self,
        model: str,
        inputs: list[str],
        *,
        dimensions: int | None = None,
        ollama: dict[str, Any] | None = None,
    ) -> Embeddings:
        body: dict[str, Any] = {"model": model, "input": inputs}
        if dimensions is not None:
            body["dimensions"] = dimensions
        for name, value in (ollama or {}).items():
            body.setdefault(name, value)
        timeout = self._client.timeout.as_dict()
        timeout["read"] = self._first_token_timeout_s
        http_request = self._client.build_request(
            "POST", "/api/embed", json=body, extensions={"timeout": timeout}
        )
        response = await self._send(http_request)
        if response.status_code != 200:
            raise await self._error_from(response, model)
        payload = await _read_json(response)
        vectors = payload.get("embeddings")
        if not isinstance(vectors, list):
            raise errors.BackendError("Ollama sent an embedding answer without 'embeddings'")
        native = {k: v for k, v in payload.items() if k.endswith("_duration")}
        return Embeddings(vectors, int(payload.get("prompt_eval_count") or 0), native)

    async def _require(self, model: str, capability: str, what: str) -> None:
        """Refuse ``what`` when Ollama says ``model`` lacks ``capability`` (``/api/show``,
        cached); an Ollama too old to list capabilities is trusted."""
        now = time.monotonic()
        cached = self._capabilities.get(model)
        if cached is None or cached[1] < now:
            response = await self._send(
                self._client.build_request("POST", "/api/show", json={"model": model})
            )
            if response.status_code != 200:
                raise await self._error_from(response, model)
            found = (await _read_json(response)).get("capabilities")
            capabilities = frozenset(found) if isinstance(found, list) else None
            cached = self._capabilities[model] = (capabilities, now + _CAPABILITIES_TTL_S)
        if cached[0] is not None and capability not in cached[0]:
            raise errors.UnsupportedError(
                f"model '{model}' does not support {what} (it lacks Ollama's "
                f"'{capability}' capability)"
            )

    # -- models -----------------------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        response = await self._send(self._client.build_request("GET", "/api/tags"))
        if response.status_code != 200:
            raise await self._error_from(response, None)
        payload = await _read_json(response)
        return [_model_info(item) for item in payload.get("models") or []]

    async def version(self) -> str:
        response = await self._send(self._client.build_request("GET", "/api/version"))
        if response.status_code != 200:
            raise await self._error_from(response, None)
        return str((await _read_json(response)).get("version", "unknown"))

    async def pull(self, name: str) -> AsyncIterator[PullProgress]:
        timeout = self._client.timeout.as_dict()
        timeout["read"] = max(self._idle_timeout_s, 300.0)
        http_request = self._client.build_request(
            "POST",
            "/api/pull",
            json={"model": name, "stream": True},
            extensions={"timeout": timeout},
        )
        response = await self._send(http_request)
        try:
            if response.status_code != 200:
                raise await self._error_from(response, name)
            async for line in _ndjson(response):
                if "error" in line:
                    message = str(line["error"])
                    if "file does not exist" in message or "not found" in message:
                        raise errors.ModelNotFoundError(
                            f"model '{name}' was not found in the registry ({message})"
                        )
                    raise errors.BackendError(f"Ollama could not pull '{name}': {message}")
                progress = PullProgress(
                    status=str(line.get("status", "")),
                    digest=line.get("digest"),
                    total=line.get("total"),
                    completed=line.get("completed"),
                )
                yield progress
                if progress.status == "success":
                    return
            raise errors.BackendStreamError(f"Ollama ended the pull of '{name}' before success")
        finally:
            await response.aclose()

    async def delete(self, name: str) -> None:
        http_request = self._client.build_request("DELETE", "/api/delete", json={"model": name})
        response = await self._send(http_request)
        if response.status_code != 200:
            raise await self._error_from(response, name)
        await response.aclose()

    async def warm(self, model: str, keep_alive: float | str | None = None) -> None:
        """Load ``model`` (an empty-prompt generate), for ``keep_alive`` when given (0 unloads
        it). Long timeout: loads are slow."""
        timeout = self._client.timeout.as_dict()
        timeout["read"] = self._first_token_timeout_s
        body: dict[str, Any] = {"model": model, "prompt": "", "stream": False}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        http_request = self._client.build_request(
            "POST", "/api/generate", json=body, extensions={"timeout": timeout}
        )
        response = await self._send(http_request)
        if response.status_code != 200:
            raise await self._error_from(response, model)
        await response.aclose()

    async def running_models(self) -> list[RunningModel]:
        response = await self._send(self._client.build_request("GET", "/api/ps"))
        if response.status_code != 200:
            raise await self._error_from(response, None)
        payload = await _read_json(response)
        items = payload.get("models") or []
        return [_running_model(item) for item in items if isinstance(item, dict)]

    async def show(self, model: str, *, verbose: bool = False) -> ModelCard:
        body: dict[str, Any] = {"model": model}
        if verbose:
            body["verbose"] = True
        response = await self._send(self._client.build_request("POST", "/api/show", json=body))
        if response.status_code != 200:
            raise await self._error_from(response, model)
        return _model_card(await _read_json(response))

    async def copy(self, source: str, destination: str) -> None:
        body = {"source": source, "destination": destination}
        response = await self._send(self._client.build_request("POST", "/api/copy", json=body))
        if response.status_code != 200:
            raise await self._error_from(response, source)
        await response.aclose()

    async def create(self, name: str, request: dict[str, Any]) -> AsyncIterator[PullProgress]:
        """Ollama's ``/api/create`` with ``request`` as the client sent it (``model`` set to
        ``name``; always streamed). Ollama's messages are kept: a 400 is ``InvalidRequestError``,
        a 404 or a base model the registry lacks ``ModelNotFoundError``, any other error line
        ``BackendStreamError``. A ``from`` model that is not installed is pulled first, so a
        ``success`` line (the pull's) may come before the end; the stream's last line is the
        create's own ``success``."""
        timeout = self._client.timeout.as_dict()
        timeout["read"] = max(self._idle_timeout_s, 300.0)
        body = {**request, "model": name, "stream": True}
        http_request = self._client.build_request(
            "POST", "/api/create", json=body, extensions={"timeout": timeout}
        )
        response = await self._send(http_request)
        try:
            if response.status_code != 200:
                raise await self._create_refusal(response)
            last = None
            async for line in _ndjson(response):
                if "error" in line:
                    raise _create_failure(str(line["error"]))
                last = _progress(line)
                yield last
            if last is None or last.status != "success":
                raise errors.BackendStreamError(f"Ollama ended the create of '{name}' early")
        finally:
            await response.aclose()

    async def _create_refusal(self, response: httpx.Response) -> errors.LlmserveError:
        if response.status_code not in (400, 404):
            return await self._error_from(response, None)
        raw = await _error_body(response)
        message = _error_message(raw) or f"HTTP {response.status_code}"
        if response.status_code == 404:
            return errors.ModelNotFoundError(message)
        return errors.InvalidRequestError(message)

    async def aclose(self) -> None:
        """Close the generation connections (the runtime owns the shared httpx client)."""
        self._pool.close()

    # -- plumbing ---------------------------------------------------------------------------

    async def _send(self, http_request: httpx.Request) -> httpx.Response:
        try:
            return await self._client.send(http_request, stream=True)
        except httpx.HTTPError as exc:
            raise translate_transport_error(exc, self.base_url, started=False) from None

    async def _error_from(
        self, response: httpx.Response, model: str | None
    ) -> errors.LlmserveError:
        return self._error(response.status_code, await _error_body(response), model)

    @staticmethod
    def _error(status: int, raw: bytes, model: str | None) -> errors.LlmserveError:
        message = _error_message(raw[:_MAX_ERROR_BODY]) or f"HTTP {status}"
        if status == 404 and model is not None:
            return errors.ModelNotFoundError(f"model '{model}' is not installed in Ollama")
        if status == 503:
            return errors.BackendBusyError(f"Ollama is busy: {message}")
        if status == 400 and model is not None and "invalid model name" in message:
            return errors.InvalidModelNameError(f"invalid model name '{model}'")
        what = message.partition(" does not support ")[2]
        if status == 400 and what in _CAPABILITIES:  # '"x" does not support tools'
            return errors.UnsupportedError(f"model '{model}' does not support {what} (Ollama)")
        if status == 400:  # the request's fault (raw with system, a bad option…): Ollama's words
            return errors.InvalidRequestError(f"Ollama refused the request: {message}")
        return errors.BackendError(f"Ollama answered {status}: {message}")


class OllamaStream(PrefetchingStream):
    """The events of one ``/api/chat`` (or, with ``generate``, ``/api/generate``) NDJSON stream
    (see ``backends/base.py``).

    Each wake-up takes every line that has arrived, so a burst of tokens is one batch. Ollama
    sends each tool call whole (arguments as an object); it becomes one delta with the
    arguments' JSON text, and an id when Ollama gave none (older versions don't). The thinking
    text becomes :class:`Thinking` events only with ``thinking`` (for Ollama's own API).
    """

    def __init__(
        self,
        response: _http1.Response,
        *,
        idle_timeout_s: float,
        deadline: float,
        generate: bool = False,
        thinking: bool = False,
    ) -> None:
        self._response = response
        self._generate = generate
        self._thinking = thinking
        self._idle_timeout_s = idle_timeout_s
        self._deadline = deadline
        self._buffer = b""
        self._finished = False
        self.result: GenerationResult | None = None
        self.tokens_received = 0
        self._calls: list[ToolCall] = []

    async def _batches(self) -> AsyncIterator[list[StreamEvent]]:
        generate, thinking = self._generate, self._thinking  # read per line: locals
        text_field = "response" if generate else "content"
        try:
            response = self._response
            while not self._finished:
                try:
                    chunks = await response.chunks(self._idle_timeout_s)
                except _http1.UpstreamError as exc:
                    raise translate_transport_error(exc, "", started=True) from None
                if not chunks:
                    raise errors.BackendStreamError(
                        "Ollama closed the stream before the generation finished"
                    )
                if time.monotonic() > self._deadline:
                    raise errors.BackendTimeoutError("the generation exceeded REQUEST_TIMEOUT_S")
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                lines = (self._buffer + data if self._buffer else data).split(b"\n")
                self._buffer = lines.pop()
                objects, failure = _parse_lines(lines)
                batch: list[StreamEvent] = []
                for obj in objects:
                    if "error" in obj:
                        failure = errors.BackendStreamError(
                            f"Ollama failed mid-generation: {obj['error']}"
                        )
                        break
                    message = obj if generate else obj.get("message")
                    if message:
                        if thinking and message.get("thinking"):
                            batch.append(Thinking(message["thinking"]))
                        text = message.get(text_field)
                        if text:
                            batch.append(text)
                        if "tool_calls" in message:
                            batch.extend(self._tool_calls(message["tool_calls"]))
                    if obj.get("done"):
                        self._finish(obj)
                        break
                self.tokens_received += len(batch)
                if self._finished:
                    await self._drain()
                if batch:
                    yield batch  # the text before a failure still reaches the client
                if failure is not None and not self._finished:
                    raise failure
        except BaseException as exc:
            self.failure = exc
            raise

    async def _drain(self) -> None:
        """Read the body's end so that the connection can go back to the pool (best effort)."""
        try:
            while await self._response.chunks(self._idle_timeout_s):
                pass
        except _http1.UpstreamError:
            pass  # the answer is complete; a broken tail only costs the connection

    def _tool_calls(self, calls: Any) -> list[ToolCallDelta]:
        deltas = []
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise errors.BackendStreamError("Ollama sent a tool call without a name")
            name, arguments = function["name"], function.get("arguments") or {}
            if isinstance(arguments, str):  # not Ollama's form, but harmless to accept
                arguments = parse_arguments(arguments, name)
            if not isinstance(arguments, dict):
                raise errors.BackendStreamError(f"Ollama sent non-object arguments for '{name}'")
            tool_call = ToolCall(str(call.get("id") or new_call_id()), name, arguments)
            text = orjson.dumps(arguments).decode()
            deltas.append(ToolCallDelta(len(self._calls), tool_call.id, name, text))
            self._calls.append(tool_call)
        return deltas

    def _finish(self, obj: dict[str, Any]) -> None:
        self._finished = True
        usage = Usage(
            prompt_tokens=int(obj.get("prompt_eval_count") or 0),
            completion_tokens=int(obj.get("eval_count") or 0),
        )
        # No stop_sequence: Ollama strips a matched stop string and says ``stop`` for it and for
        # an end of turn alike, so which one it was is not known.
        result = finished(str(obj.get("done_reason") or "stop"), usage, self._calls)
        result.native = {key: value for key, value in obj.items() if key not in _CORE_FIELDS}
        self.result = result

    async def aclose(self) -> None:
        # Unless the body was read to its end, this aborts the connection: what stops Ollama.
        await self._response.aclose()


#: Fields of Ollama's final object that the core reads itself (the rest go to ``native``).
_CORE_FIELDS = frozenset(
    {"model", "created_at", "message", "response", "thinking", "done", "done_reason"}
    | {"prompt_eval_count", "eval_count"}
)


def _parse_lines(lines: list[bytes]) -> tuple[list[dict[str, Any]], errors.LlmserveError | None]:
    """The NDJSON objects of one read, parsed in one call (a burst of 64 tokens is one parse).

    On a malformed line, the objects before it and the error: the text before it still counts.
    """
    lines = [line for line in lines if line]
    if len(lines) > 1:
        try:
            parsed = orjson.loads(b"[" + b",".join(lines) + b"]")
            # As many objects as lines: '{...},{...}' on one line is malformed, not two objects.
            if len(parsed) == len(lines) and all(type(obj) is dict for obj in parsed):
                return parsed, None
        except ValueError:
            pass
    objects: list[dict[str, Any]] = []
    for line in lines:  # find the bad line
        try:
            obj = orjson.loads(line)
        except ValueError:
            obj = None
        if type(obj) is not dict:
            return objects, errors.BackendStreamError("Ollama sent a malformed line")
        objects.append(obj)
    return objects, None


def translate_transport_error(
    exc: httpx.HTTPError | _http1.UpstreamError, base_url: str, *, started: bool
) -> Exception:
    """The one place transport failures (httpx's, or the generation pool's) become llmserve
    errors."""
    where = f" at {base_url}" if base_url else ""
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | _http1.UpstreamConnectError):
        return errors.BackendUnavailableError(
            f"cannot connect to Ollama{where}: {exc or 'refused'}"
        )
    if isinstance(exc, httpx.TimeoutException | _http1.UpstreamTimeout):
        phase = "the next token" if started else "the first token"
        return errors.BackendTimeoutError(f"Ollama{where} timed out waiting for {phase}")
    if started:
        return errors.BackendStreamError(f"the connection to Ollama broke mid-stream: {exc!r}")
    return errors.BackendError(f"the request to Ollama{where} failed: {exc!r}")


async def _ndjson(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    try:
        async for line in response.aiter_lines():
            if line.strip():
                yield json.loads(line)
    except httpx.HTTPError as exc:
        raise translate_transport_error(exc, "", started=True) from None
    except ValueError:
        raise errors.BackendStreamError("Ollama sent a malformed line") from None


async def _read_json(response: httpx.Response) -> dict[str, Any]:
    try:
        raw = await response.aread()
    except httpx.HTTPError as exc:
        raise translate_transport_error(exc, "", started=True) from None
    finally:
        await response.aclose()
    try:
        payload = json.loads(raw)
    except ValueError:
        raise errors.BackendError("Ollama sent a body that is not JSON") from None
    if not isinstance(payload, dict):
        raise errors.BackendError("Ollama sent an unexpected JSON body")
    return payload


async def _error_body(response: httpx.Response) -> bytes:
    """The body of an error answer (its first ``_MAX_ERROR_BODY`` bytes), then closed."""
    try:
        raw = await response.aread()
    except httpx.HTTPError:
        raw = b""
    finally:
        await response.aclose()
    return raw[:_MAX_ERROR_BODY]


def _error_message(raw: bytes) -> str:
    try:
        payload = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return raw.decode("utf-8", "replace").strip()


def _dumps(body: dict[str, Any]) -> bytes:
    """orjson, or the standard library for what orjson refuses: integers beyond 64 bits or lone
    surrogates in a schema or in tool arguments (JSON carries both; Ollama reads the numbers,
    and the escaped surrogates as replacement characters)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


def chat_body(
    model: str, request: GenerationRequest, forced: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``/api/chat`` body for ``request``: messages, tools and format in Ollama's own form
    (tool arguments as objects, images as base64, ``keep_alive`` at the top level)."""
    messages = forced_messages(request) if forced is not None else request.messages
    names = {c.id: c.name for m in request.messages for c in m.tool_calls}
    body: dict[str, Any] = {
        "model": model,
        "messages": [_message(message, names) for message in messages],
        "stream": True,
    }
    tools = request.offered_tools if forced is None else ()
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description or "",
                    "parameters": tool.parameters,
                },
            }
            for tool in tools
        ]
    response_format = request.response_format
    if forced is not None:
        body["format"] = forced
    elif response_format is not None and response_format.kind != "text":
        body["format"] = response_format.schema if response_format.schema is not None else "json"
    return _common(body, request)


def generate_body(model: str, request: GenerationRequest) -> dict[str, Any]:
    """The ``/api/generate`` body for a request through llmserve's Ollama ``/api/generate``:
    the prompt (the last message), its images and the system message as the client sent them,
    so that ``raw``, ``suffix``, ``template`` and ``context`` keep their meaning."""
    messages = request.messages
    last = messages[-1]
    body: dict[str, Any] = {"model": model, "prompt": last.content, "stream": True}
    if messages[0].role == "system" and len(messages) > 1:
        body["system"] = messages[0].content
    if last.images:
        body["images"] = list(last.images)
    response_format = request.response_format
    if response_format is not None and response_format.kind != "text":
        body["format"] = response_format.schema if response_format.schema is not None else "json"
    return _common(body, request)


def _common(body: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
    """Options, ``keep_alive`` and the Ollama API's own fields, as the client sent them."""
    options = _options(request)
    if options:
        body["options"] = options
    if request.options.keep_alive is not None:
        body["keep_alive"] = request.options.keep_alive
    if request.ollama is not None:
        for name, value in request.ollama.fields.items():
            body.setdefault(name, value)
    return body


def _message(message: Message, names: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images:
        out["images"] = list(message.images)
    if message.tool_calls:
        out["tool_calls"] = [
            (
                {"id": call.id, "function": {"name": call.name, "arguments": call.arguments}}
                if call.id
                else {"function": {"name": call.name, "arguments": call.arguments}}
            )
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    tool_name = message.tool_name or (
        names.get(message.tool_call_id) if message.tool_call_id else None
    )
    if message.role == "tool" and tool_name:
        out["tool_name"] = tool_name  # what Ollama's templates read
    return out


#: Ollama's option name per domain option.
_OPTION_NAMES = (
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
    ("seed", "seed"),
    ("max_tokens", "num_predict"),
    ("num_ctx", "num_ctx"),
    ("repeat_penalty", "repeat_penalty"),
    ("presence_penalty", "presence_penalty"),
    ("frequency_penalty", "frequency_penalty"),
)


def _options(request: GenerationRequest) -> dict[str, Any]:
    opts = request.options
    out: dict[str, Any] = {}
    for ours, theirs in _OPTION_NAMES:
        value = getattr(opts, ours)
        if value is not None:
            out[theirs] = value
    if opts.stop:
        out["stop"] = list(opts.stop)
    if opts.extra:
        out.update(opts.extra)
    return out


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_timestamp(value: str | None) -> datetime | None:
    """Ollama's RFC 3339 timestamps carry nanoseconds, which ``fromisoformat`` (3.11) refuses."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
    except ValueError:
        return None


def _model_info(item: dict[str, Any]) -> ModelInfo:
    modified_at = parse_timestamp(item.get("modified_at"))
    return ModelInfo(
        name=str(item.get("name") or item.get("model")),
        size=int(item.get("size") or 0),
        modified_at=modified_at,
        digest=item.get("digest"),
        details=dict(item.get("details") or {}),
    )


def _running_model(item: dict[str, Any]) -> RunningModel:
    context_length = item.get("context_length")
    return RunningModel(
        name=str(item.get("name") or item.get("model")),
        size=int(item.get("size") or 0),
        size_vram=int(item.get("size_vram") or 0),
        digest=item.get("digest"),
        details=dict(item.get("details") or {}),
        expires_at=parse_timestamp(item.get("expires_at")),
        context_length=context_length if isinstance(context_length, int) else None,
        native=item,
    )


def _model_card(payload: dict[str, Any]) -> ModelCard:
    def text(key: str) -> str | None:
        value = payload.get(key)
        return value if isinstance(value, str) else None

    return ModelCard(
        capabilities=tuple(str(c) for c in payload.get("capabilities") or ()),
        details=dict(payload.get("details") or {}),
        model_info=dict(payload.get("model_info") or {}),
        template=text("template"),
        system=text("system"),
        parameters=text("parameters"),
        license=text("license"),
        modified_at=parse_timestamp(payload.get("modified_at")),
        native=payload,
    )


def _progress(line: dict[str, Any]) -> PullProgress:
    return PullProgress(
        status=str(line.get("status", "")),
        digest=line.get("digest"),
        total=line.get("total"),
        completed=line.get("completed"),
    )


def _create_failure(message: str) -> errors.LlmserveError:
    """An error line of ``/api/create``: a base model the registry lacks is "not found"."""
    if "file does not exist" in message or "not found" in message:
        return errors.ModelNotFoundError(message)
    return errors.BackendStreamError(message)
