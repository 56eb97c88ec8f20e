"""The OpenAI-compatible backend: vLLM, TGI, SGLang, llama.cpp's server — anything that speaks
``/v1/models`` and streaming ``/v1/chat/completions``.

The only module that knows that wire format on the backend side. Transport failures, HTTP
statuses and OpenAI's error envelope (``{"error": {"message": …}}``) are translated here, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx

from llmserve import errors
from llmserve.backends._ollama_only import refuse_embedding_fields, refuse_ollama_only
from llmserve.backends._openai_stream import OpenAIStream, error_message
from llmserve.domain import (
    Embeddings,
    GenerationRequest,
    Message,
    ModelCard,
    ModelInfo,
    PullProgress,
    RunningModel,
)

__all__ = ["OpenAIBackend", "OpenAIStream", "normalise_base_url"]

log = logging.getLogger(__name__)

_MAX_ERROR_BODY = 64 * 1024
_WHERE = "the OpenAI-compatible server"


def normalise_base_url(base_url: str) -> str:
    """``http://host:port`` and ``http://host:port/v1`` both become ``http://host:port/v1``."""
    base = base_url.strip().rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


class OpenAIBackend:
    """Talks to one OpenAI-compatible server through the injected (caller-owned) ``client``.

    Call ``await start()`` once before use: when ``built_in_model`` is not given, it asks the
    server which models it serves and takes the first as the built-in one. Until then the
    ``built_in_model`` property raises ``BackendUnavailableError``.
    """

    name = "openai"
    max_concurrency: int | None = None

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        client: httpx.AsyncClient,
        *,
        built_in_model: str | None = None,
        first_token_timeout_s: float = 300,
        idle_timeout_s: float = 60,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self._client = client
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._built_in_model = built_in_model
        self._first_token_timeout_s = first_token_timeout_s
        self._idle_timeout_s = idle_timeout_s

    @property
    def built_in_model(self) -> str:
        if self._built_in_model is None:
            raise errors.BackendUnavailableError(
                f"the built-in model of {_WHERE} at {self.base_url} is not known yet: "
                "the server was not reachable when llmserve started"
            )
        return self._built_in_model

    async def start(self) -> None:
        """Learn the built-in model (the first one the server lists) unless it was given."""
        if self._built_in_model is not None:
            return
        models = await self.list_models()
        if not models:
            raise errors.BackendError(f"{_WHERE} at {self.base_url} serves no model")
        self._built_in_model = models[0].name
        log.info("built-in model of %s: %s", self.base_url, self._built_in_model)

    # -- generation -------------------------------------------------------------------------

    async def open_generation(self, model: str, request: GenerationRequest) -> OpenAIStream:
        body = chat_body(model, request)
        # The client's read timeout is only a backstop: the stream enforces the first-token
        # and idle timeouts itself (headers arrive long before the first token with vLLM).
        timeout = self._client.timeout.as_dict()
        timeout["read"] = max(self._first_token_timeout_s, self._idle_timeout_s)
        http_request = self._client.build_request(
            "POST",
            f"{self.base_url}/chat/completions",
            json=body,
            headers=self._headers,
            extensions={"timeout": timeout},
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._first_token_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._send(http_request)
        except TimeoutError:
            raise errors.BackendTimeoutError(
                f"{_WHERE} at {self.base_url} did not answer within FIRST_TOKEN_TIMEOUT_S"
            ) from None
        if response.status_code != 200:
            raise await self._error_from(response, model)
        stream = OpenAIStream(
            response, self.base_url, deadline, self._idle_timeout_s, request.options.stop
        )
        try:
            await stream.prefetch()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def embed(
        self,
        model: str,
        inputs: list[str],
        *,
        dimensions: int | None = None,
        ollama: dict[str, Any] | None = None,
    ) -> Embeddings:
        refuse_embedding_fields(ollama, model, "openai")
        if not inputs:
            return Embeddings([], 0)
        body: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        http_request = self._client.build_request(
            "POST", f"{self.base_url}/embeddings", json=body, headers=self._headers
        )
        response = await self._send(http_request)
        if response.status_code != 200:
            raise await self._error_from(response, model)
        payload = await self._json(response)
        data = payload.get("data")
        if not isinstance(data, list):
            raise errors.BackendError(f"{_WHERE} sent an embedding answer without 'data'")
        ordered = sorted(data, key=lambda item: item.get("index", 0))
        vectors = [item.get("embedding") for item in ordered]
        if not all(isinstance(vector, list) for vector in vectors):
            raise errors.BackendError(f"{_WHERE} sent embeddings that are not float lists")
        usage = payload.get("usage") or {}
        return Embeddings(vectors, int(usage.get("prompt_tokens") or 0))

    # -- models -----------------------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        payload = await self._get_json("/models")
        data = payload.get("data")
        if not isinstance(data, list):
            raise errors.BackendError(f"{_WHERE} sent a model list without 'data'")
        models = [_model_info(item) for item in data if isinstance(item, dict) and item.get("id")]
        if self._built_in_model is None and models:
            self._built_in_model = models[0].name
        return models

    async def version(self) -> str:
        await self._get_json("/models")
        return "openai-compatible"

    async def pull(self, name: str) -> AsyncIterator[PullProgress]:
        raise errors.NotSupportedError(
            "pulling models is not supported by the openai backend: "
            "load models in the OpenAI-compatible server itself"
        )
        yield  # unreachable; makes this an async generator like the protocol's pull

    async def delete(self, name: str) -> None:
        raise errors.NotSupportedError(
            "deleting models is not supported by the openai backend: "
            "unload models in the OpenAI-compatible server itself"
        )

    async def warm(self, model: str, keep_alive: float | str | None = None) -> None:
        """Nothing to do: the server keeps its models loaded (and ``keep_alive``, Ollama's, is
        refused)."""
        if keep_alive is not None:
            raise errors.UnsupportedError(
                "the option 'keep_alive' is Ollama's: the openai backend cannot honour it"
            )

    async def running_models(self) -> list[RunningModel]:
        """``[]``: an OpenAI-compatible server does not say which models it holds in memory."""
        return []

    async def show(self, model: str, *, verbose: bool = False) -> ModelCard:
        """What ``/v1/models`` says of ``model`` (when it was created), and the capabilities
        llmserve gives it: ``completion`` and ``tools`` (sent in OpenAI's form; how well the
        model calls them is the server's affair). Nothing is known of its weights."""
        found = next(
            (info for info in await self.list_models() if info.name.lower() == model.lower()),
            None,
        )
        if found is None:
            raise errors.ModelNotFoundError(
                f"model '{model}' is not served by {_WHERE} at {self.base_url}"
            )
        return ModelCard(capabilities=("completion", "tools"), modified_at=found.modified_at)

    async def copy(self, source: str, destination: str) -> None:
        raise errors.NotSupportedError(
            "copying models is not supported by the openai backend: "
            "name models in the OpenAI-compatible server itself"
        )

    async def create(self, name: str, request: dict[str, Any]) -> AsyncIterator[PullProgress]:
        raise errors.NotSupportedError(
            "creating models is not supported by the openai backend: "
            "load models in the OpenAI-compatible server itself"
        )
        yield  # unreachable; makes this an async generator like the protocol's create

    async def aclose(self) -> None:
        """Nothing to release: the caller owns the client."""

    # -- plumbing ---------------------------------------------------------------------------

    async def _send(self, http_request: httpx.Request) -> httpx.Response:
        try:
            return await self._client.send(http_request, stream=True)
        except httpx.HTTPError as exc:
            raise translate_transport_error(exc, self.base_url) from None

    async def _get_json(self, path: str) -> dict[str, Any]:
        http_request = self._client.build_request(
            "GET", f"{self.base_url}{path}", headers=self._headers
        )
        response = await self._send(http_request)
        if response.status_code != 200:
            raise await self._error_from(response, None)
        return await self._json(response)

    async def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            raw = await response.aread()
        except httpx.HTTPError as exc:
            raise translate_transport_error(exc, self.base_url) from None
        finally:
            await response.aclose()
        try:
            payload = json.loads(raw)
        except ValueError:
            raise errors.BackendError(f"{_WHERE} sent a body that is not JSON") from None
        if not isinstance(payload, dict):
            raise errors.BackendError(f"{_WHERE} sent an unexpected JSON body")
        return payload

    async def _error_from(
        self, response: httpx.Response, model: str | None
    ) -> errors.LlmserveError:
        try:
            raw = await response.aread()
        except httpx.HTTPError:
            raw = b""
        finally:
            await response.aclose()
        status = response.status_code
        message = error_message(raw[:_MAX_ERROR_BODY]) or f"HTTP {status}"
        where = f"{_WHERE} at {self.base_url}"
        if status in (401, 403):
            return errors.BackendError(
                f"{where} rejected the API key (HTTP {status}: {message}); check OPENAI_API_KEY"
            )
        if status in (400, 404) and model is not None and _means_unknown_model(raw, message):
            return errors.ModelNotFoundError(f"model '{model}' is not served by {where}")
        if status in (429, 503):
            return errors.BackendBusyError(
                f"{where} is busy (HTTP {status}): {message}", _retry_after(response)
            )
        return errors.BackendError(f"{where} answered {status}: {message}")


def translate_transport_error(exc: httpx.HTTPError, base_url: str) -> errors.LlmserveError:
    """httpx errors before the stream started → llmserve errors."""
    where = f"{_WHERE} at {base_url}"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return errors.BackendUnavailableError(f"cannot connect to {where}: {exc or 'refused'}")
    if isinstance(exc, httpx.TimeoutException):
        return errors.BackendTimeoutError(f"{where} timed out")
    return errors.BackendError(f"the request to {where} failed: {exc!r}")


def chat_body(model: str, request: GenerationRequest) -> dict[str, Any]:
    """The ``/v1/chat/completions`` body: the conversation, tools, tool choice and response
    format in OpenAI's own form."""
    opts = request.options
    refuse_ollama_only(request, model, "openai")
    for name, value in (("num_ctx", opts.num_ctx), ("keep_alive", opts.keep_alive)):
        if value is not None:
            raise errors.UnsupportedError(
                f"the option '{name}' is Ollama's: the openai backend cannot honour it"
            )
    body: dict[str, Any] = {
        "model": model,
        "messages": [_message(message) for message in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    "parameters": tool.parameters,
                },
            }
            for tool in request.tools
        ]
        choice = request.tool_choice
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}}
            if choice.mode == "function"
            else choice.mode
        )
        if not request.parallel_tool_calls:
            body["parallel_tool_calls"] = False
    response_format = request.response_format
    if response_format is not None and response_format.kind == "json":
        body["response_format"] = {"type": "json_object"}
    elif response_format is not None and response_format.kind == "json_schema":
        schema: dict[str, Any] = {"name": response_format.name or "response"}
        schema["schema"] = response_format.schema
        if response_format.strict:
            schema["strict"] = True
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    optional = {
        "max_tokens": opts.max_tokens,
        "temperature": opts.temperature,
        "top_p": opts.top_p,
        "seed": opts.seed,
        "presence_penalty": opts.presence_penalty,
        "frequency_penalty": opts.frequency_penalty,
        # Not in OpenAI's own API, but vLLM, SGLang and llama.cpp accept them; sent only when set.
        "top_k": opts.top_k,
        "repeat_penalty": opts.repeat_penalty,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if opts.stop:
        body["stop"] = list(opts.stop)
    return body


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    if message.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
        parts += [
            {
                "type": "image_url",
                "image_url": {"url": f"data:{image_media_type(data)};base64,{data}"},
            }
            for data in message.images
        ]
        out["content"] = parts
    else:
        out["content"] = message.content
    if message.tool_calls:
        if not message.content:
            out["content"] = None
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for call in message.tool_calls
        ]
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id or ""
    return out


_SIGNATURES = (
    ("iVBORw0KGgo", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)


def image_media_type(data: str) -> str:
    """The media type of base64 image data, from its first bytes (PNG when unknown)."""
    return next((kind for prefix, kind in _SIGNATURES if data.startswith(prefix)), "image/png")


def _means_unknown_model(raw: bytes, message: str) -> bool:
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and error.get("code") == "model_not_found":  # OpenAI's own code
        return True
    lowered = message.lower()
    return "model" in lowered and any(
        phrase in lowered for phrase in ("does not exist", "not found", "not exist", "unknown")
    )


def _retry_after(response: httpx.Response) -> int:
    value = response.headers.get("retry-after", "")
    return int(value) if value.isdigit() else 2


def _model_info(item: dict[str, Any]) -> ModelInfo:
    created = item.get("created")
    modified_at = None
    if isinstance(created, int | float) and created > 0:
        modified_at = datetime.fromtimestamp(created, UTC)
    details: dict[str, object] = {
        key: item[key] for key in ("owned_by", "max_model_len") if key in item
    }
    return ModelInfo(name=str(item["id"]), modified_at=modified_at, details=details)
