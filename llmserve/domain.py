"""Plain types shared by the services, the backends, the API and the CLI.

No wire format lives here: these are what a generation *is*, whatever speaks it. A generation
is a **conversation** (messages with roles, text, images, tool calls and tool results) plus
tools, a tool choice, a response format and sampling options; a single prompt is a conversation
of one user message (:meth:`GenerationRequest.from_prompt`).

A backend's stream yields **typed events**, in batches (one list per upstream read):

* ``str``: a text delta (a plain string, so the per-token path allocates nothing more);
* :class:`ToolCallDelta`: part of a tool call (the first for an index carries its id and name,
  the following ones argument fragments);
* :class:`Thinking`: a fragment of a thinking model's reasoning, apart from the answer (only
  for requests through Ollama's API, whose clients read it);
* the end: :class:`GenerationResult` (done reason ``stop`` | ``length`` | ``tool_calls``,
  usage, the tool calls whole, the stop string that ended it where the engine says which) is
  set on the stream when its iteration ends.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(slots=True, frozen=True)
class GenerationOptions:
    """Sampling options, already validated. ``None`` means the backend's default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    num_ctx: int | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    #: Ollama's ``keep_alive`` (seconds, or a duration string such as ``"5m"``).
    keep_alive: float | str | None = None
    #: Ollama options with no field above (``min_p``, ``mirostat``, ``num_gpu``…), as a client
    #: of llmserve's Ollama API sent them: Ollama receives them untouched; the other backends
    #: refuse those that would change the answer and skip those that configure Ollama's runner.
    extra: dict[str, Any] = field(default_factory=dict)


_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_call_id() -> str:
    """An id for a tool call that came without one (``call_`` and 24 letters or digits)."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A whole tool call. ``arguments`` is the JSON object the model produced."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(slots=True, frozen=True)
class Message:
    """One turn. ``images`` are standard base64 (no ``data:`` prefix); a ``tool`` message
    answers ``tool_call_id`` (Ollama names the tool instead: ``tool_name``)."""

    role: Role
    content: str = ""
    images: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    tool_name: str | None = None


@dataclass(slots=True, frozen=True)
class Tool:
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(slots=True, frozen=True)
class ToolChoice:
    """``auto`` | ``none`` | ``required`` | ``function`` (then ``name`` says which)."""

    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None


AUTO = ToolChoice()


@dataclass(slots=True, frozen=True)
class ResponseFormat:
    """``text``, any JSON object (``json``), or JSON that validates against ``schema``."""

    kind: Literal["text", "json", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool = False


@dataclass(slots=True, frozen=True)
class OllamaExtras:
    """What a request through llmserve's Ollama API carries beyond the conversation.

    ``endpoint``: the Ollama route the client called (``generate`` goes to Ollama's
    ``/api/generate``, so ``raw``, ``suffix``, ``template`` and ``context`` keep their meaning).
    ``fields``: the top-level fields llmserve has no concept of (``think``, ``raw``, ``suffix``,
    ``template``, ``context``, ``truncate``, ``shift``, ``logprobs``, ``top_logprobs``), sent to
    Ollama as they came; another backend refuses any that is not at its default.
    """

    endpoint: Literal["chat", "generate"] = "chat"
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class GenerationRequest:
    """What a client asks for. The model is chosen by the service, never by the request."""

    messages: tuple[Message, ...]
    options: GenerationOptions = field(default_factory=GenerationOptions)
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = AUTO
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    #: Set by the Ollama API only: its extra fields; the stream then carries :class:`Thinking`.
    ollama: OllamaExtras | None = None

    @classmethod
    def from_prompt(
        cls,
        prompt: str,
        system: str | None = None,
        options: GenerationOptions | None = None,
        response_format: ResponseFormat | None = None,
    ) -> GenerationRequest:
        """A one-user-message conversation (with a system message first, when given)."""
        user = Message("user", prompt)
        messages = (Message("system", system), user) if system is not None else (user,)
        return cls(
            messages, options=options or GenerationOptions(), response_format=response_format
        )

    @property
    def single_prompt(self) -> tuple[str, str | None] | None:
        """``(prompt, system)`` when this is one plain user message (and at most one system
        message before it), with no tools or images: what a completion endpoint can take."""
        messages = self.messages
        if self.tools or not messages or len(messages) > 2:
            return None
        last = messages[-1]
        if last.role != "user" or last.images:
            return None
        if len(messages) == 1:
            return last.content, None
        first = messages[0]
        return (last.content, first.content) if first.role == "system" else None

    @property
    def offered_tools(self) -> tuple[Tool, ...]:
        """The tools the model may call under ``tool_choice`` (none for ``none``)."""
        choice = self.tool_choice
        if choice.mode == "none":
            return ()
        if choice.mode == "function":
            return tuple(tool for tool in self.tools if tool.name == choice.name)
        return self.tools

    def texts(self) -> list[str]:
        """The text the request carries outside JSON objects (for the Unicode check)."""
        found: list[str] = []
        for message in self.messages:
            found.append(message.content)
            found.extend(text for call in message.tool_calls for text in (call.id, call.name))
            if message.tool_call_id is not None:
                found.append(message.tool_call_id)
        for tool in self.tools:
            found.append(tool.description or "")
        found.extend(self.options.stop)
        return found


@dataclass(slots=True, frozen=True)
class ToolCallDelta:
    """Part of a streamed tool call. The first delta of an ``index`` carries ``id`` and
    ``name``; ``arguments`` is a fragment of the arguments' JSON text (possibly all of it)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True, frozen=True)
class Thinking:
    """A fragment of a thinking model's reasoning (Ollama's ``thinking`` field)."""

    text: str


#: What a backend stream's batches hold.
StreamEvent = str | ToolCallDelta | Thinking


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class GenerationResult:
    """How a finished generation ended, filled in by the backend's stream when it completes.

    ``done_reason`` is ``tool_calls`` whenever the answer holds tool calls, whatever the
    engine said (Ollama says ``stop``).
    """

    done_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    tool_calls: list[ToolCall] = field(default_factory=list)
    #: The engine's own final fields the core has no concept of, for the face that speaks
    #: its language (Ollama: ``context``, the durations, ``logprobs``).
    native: dict[str, Any] = field(default_factory=dict)
    #: Which of the request's stop strings ended the generation (done reason ``stop``), when
    #: the engine says which; None for an end of turn, and wherever the engine does not say
    #: (Ollama answers ``stop`` for both, so through Ollama it is always None).
    stop_sequence: str | None = None


@dataclass(slots=True, frozen=True)
class Embeddings:
    """Vectors for a list of inputs, in input order."""

    vectors: list[list[float]]
    prompt_tokens: int = 0
    #: The engine's own fields the core has no concept of (Ollama: its durations).
    native: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class ModelInfo:
    """An installed model as the backend reports it. ``name`` always includes the tag."""

    name: str
    size: int = 0
    modified_at: datetime | None = None
    digest: str | None = None
    details: dict[str, object] = field(default_factory=dict)
    #: The backend servers that have it (their base URLs as configured), where known.
    backends: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class PullProgress:
    """One progress report of a pull (Ollama's fields; absent ones are None)."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


@dataclass(slots=True, frozen=True)
class RunningModel:
    """A model loaded in memory now (what Ollama's ``/api/ps`` lists). ``native``: the engine's
    own description when it speaks Ollama's language (its ``/api/ps`` item, as it came)."""

    name: str
    size: int = 0
    size_vram: int = 0
    digest: str | None = None
    details: dict[str, object] = field(default_factory=dict)
    expires_at: datetime | None = None
    context_length: int | None = None
    native: dict[str, Any] | None = None


@dataclass(slots=True, frozen=True)
class ModelCard:
    """What an engine can tell about one installed model (what Ollama's ``/api/show`` says).

    ``capabilities`` use Ollama's words (``completion``, ``tools``, ``vision``, ``embedding``,
    ``thinking``, ``insert``); ``details`` and ``model_info`` its keys (``model_info`` is the
    GGUF metadata where there is a GGUF). ``native``: the engine's own answer when it speaks
    Ollama's language (Ollama's ``/api/show`` JSON, as it came), for the face that speaks it.
    """

    capabilities: tuple[str, ...] = ()
    details: dict[str, object] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    parameters: str | None = None
    license: str | None = None
    modified_at: datetime | None = None
    native: dict[str, Any] | None = None
