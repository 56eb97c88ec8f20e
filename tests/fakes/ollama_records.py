"""Plain data for the Ollama double: scripts, installed models and what was recorded."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.ollama_names import ModelName

DEFAULT_SIZE = 2_019_393_189  # llama3.2:3b Q4_K_M, as Ollama reports it
DEFAULT_CAPABILITIES = ("completion", "tools")
DEFAULT_EMBEDDING_DIM = 16


DEFAULT_TOKENS = ("Hello", ",", " world", "!")
TOOL_CALL_STYLES = ("current", "index", "bare")
TOOL_CHUNKS = ("each", "together")


@dataclass
class Script:
    """How the next ``/api/generate`` or ``/api/chat`` request is answered.

    Timeline: wait ``first_token_delay_s`` (nothing at all is sent meanwhile, like Ollama while it
    loads and evaluates the prompt); fail now with ``status`` if set; otherwise stream the
    ``thinking`` chunks, then the text chunks, then the tool-call chunks, sleeping ``delay_s``
    before each. ``error_after`` / ``cut_after`` / ``options.num_predict`` count positions in that
    sequence. The earliest of them wins (on a tie: error, then cut, then the normal end).

    The text chunks are ``tokens``, except while ``tokens`` is left at its default
    (:data:`DEFAULT_TOKENS`):

    * with ``tool_calls`` that are sent (see below) there is no text at all;
    * a request that carries ``format`` gets JSON text satisfying it, split into a few chunks
      (``json_answer=None``, the default). ``json_answer=True`` answers JSON even with explicit
      ``tokens`` (and ``{"answer": "Hello, world!"}`` when the request has no ``format``);
      ``json_answer=False`` never does, e.g. to play a model that ignores ``format``.

    ``tool_calls`` (chat only) are ``{"name": str, "arguments": {...}}`` dicts. Like Ollama,
    which parses tool calls only when the request offers ``tools``, they are sent only to a chat
    request with a non-empty ``tools`` list; otherwise the answer is plain text. How they look:

    * ``tool_call_style="current"``: ``{"id": "call_<8 of a-z0-9>", "function": {"index": N,
      "name", "arguments"}}`` (Ollama 0.17 and later);
    * ``"index"``: no ``id``, ``index`` omitted when 0 (Go ``omitempty``; Ollama 0.5 to 0.12);
    * ``"bare"``: neither ``id`` nor ``index`` (Ollama 0.3 and 0.4).

    ``tool_chunks="each"`` streams one chunk per call, ``"together"`` one chunk holding them all;
    those chunks have ``message.content == ""`` and ``done: false``. The final object says
    ``done_reason: "stop"`` as usual (the native API has no ``tool_calls`` reason). With
    ``stream: false`` every call is collected in ``message.tool_calls`` next to the joined text.
    """

    tokens: list[str] = field(default_factory=lambda: list(DEFAULT_TOKENS))
    delay_s: float = 0.0
    first_token_delay_s: float = 0.0
    status: int | None = None
    error: str = "an error was encountered while running the model"
    error_after: int | None = None
    cut_after: int | None = None
    hang: bool = False
    done_reason: str = "stop"
    prompt_eval_count: int = 7
    thinking: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_call_style: str = "current"
    tool_chunks: str = "each"
    json_answer: bool | None = None

    def __post_init__(self) -> None:
        if self.tool_call_style not in TOOL_CALL_STYLES:
            raise ValueError(f"tool_call_style must be one of {TOOL_CALL_STYLES}")
        if self.tool_chunks not in TOOL_CHUNKS:
            raise ValueError(f"tool_chunks must be one of {TOOL_CHUNKS}")
        for call in self.tool_calls:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ValueError(f"a scripted tool call needs a string name: {call!r}")
            if not isinstance(call.get("arguments", {}), dict):
                raise ValueError(f"tool call arguments must be a dict, never a string: {call!r}")

    @property
    def default_tokens(self) -> bool:
        """Whether ``tokens`` is still the default answer (so it may give way to JSON or calls)."""
        return tuple(self.tokens) == DEFAULT_TOKENS


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the double received it (every request, including 404s)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    json: Any
    body: bytes


@dataclass
class GenerationRecord:
    """One generate/chat request that consumed a script (load/unload requests are not recorded).

    ``body`` is the request's JSON exactly as received (unknown keys, ``null`` values and the
    client's key spelling included) and ``path`` its URL path; ``request`` holds the fields
    Ollama decoded, under their canonical names, without ``null`` ones. ``messages`` are the chat
    messages as Ollama sees them (roles lower-cased, ``null`` entries dropped).
    ``tool_calls_sent`` are the tool calls exactly as they went out (ids included).

    ``tokens_sent`` counts chunks written (streaming) or generated so far (``stream:false``).
    ``finished``: the ``done:true`` object went out. ``cancelled``: the client closed the
    connection first. ``aborted``: the double cut the connection (``cut_after``, shutdown,
    ``set_down``). ``error``/``status``: a scripted failure.
    """

    kind: str
    model: str
    prompt: str
    options: dict[str, Any]
    stream: bool
    request: dict[str, Any]
    messages: list[dict[str, Any]] | None = None
    tokens_sent: int = 0
    finished: bool = False
    cancelled: bool = False
    aborted: bool = False
    done_reason: str | None = None
    error: str | None = None
    status: int = 200
    path: str = ""
    body: Any = None
    tool_calls_sent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tools(self) -> list[Any]:
        """The ``tools`` the request offered (chat), ``[]`` when none."""
        return list(self.request.get("tools") or [])

    @property
    def format(self) -> Any:
        """The request's ``format`` (``None`` when absent)."""
        return self.request.get("format")

    @property
    def images(self) -> list[str]:
        """Every base64 image the request carried, in order (all messages for chat)."""
        if self.messages is None:
            return [image for image in self.request.get("images") or [] if image is not None]
        return [
            image
            for message in self.messages
            for image in message.get("images") or []
            if image is not None
        ]


@dataclass
class EmbedRecord:
    """One ``/api/embed`` or ``/api/embeddings`` request that was answered with vectors.

    ``inputs`` are the texts embedded (``[]`` for an empty input); ``body`` is the JSON exactly
    as received; ``embeddings`` are the vectors sent back.
    """

    path: str
    model: str
    inputs: list[str]
    body: Any
    request: dict[str, Any]
    embeddings: list[list[float]] = field(default_factory=list)

    @property
    def dimensions(self) -> int | None:
        value = self.request.get("dimensions")
        return int(value) if value is not None else None

    @property
    def truncate(self) -> bool | None:
        return self.request.get("truncate")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.request.get("options") or {})


@dataclass
class PullRecord:
    """One ``/api/pull`` that got past validation."""

    model: str
    stream: bool
    statuses: list[str] = field(default_factory=list)
    finished: bool = False
    cancelled: bool = False
    aborted: bool = False
    error: str | None = None


@dataclass
class CreateRecord:
    """One ``/api/create`` that got past validation: ``request`` holds the decoded fields
    (canonical names, no ``null`` ones); ``statuses`` the progress written, in order."""

    model: str
    stream: bool
    request: dict[str, Any]
    statuses: list[str] = field(default_factory=list)
    finished: bool = False
    cancelled: bool = False
    aborted: bool = False
    error: str | None = None


def _fake_digest(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


@dataclass
class ModelEntry:
    """An installed (or pullable) model.

    ``capabilities`` is what ``/api/show`` lists and what chat/generate check: ``completion``
    (chat and generate), ``tools`` (a chat offering ``tools``), ``thinking`` (``think``),
    ``insert`` (``suffix``); ``vision`` and ``embedding`` are only listed (Ollama's chat does not
    refuse images, and any model can embed). ``embedding_dim`` is the length of its vectors.
    """

    name: ModelName
    size: int
    digest: str
    modified_at: str
    family: str
    parameter_size: str
    quantization_level: str
    capabilities: tuple[str, ...]
    embedding_dim: int = DEFAULT_EMBEDDING_DIM
    #: Set by ``/api/create`` (``system``, ``template``); ``/api/show`` reports them.
    system: str | None = None
    template: str | None = None

    @classmethod
    def build(
        cls,
        name: ModelName,
        *,
        size: int,
        modified_at: str,
        digest: str | None = None,
        family: str | None = None,
        parameter_size: str | None = None,
        quantization_level: str = "Q4_K_M",
        capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
    ) -> ModelEntry:
        """Fill plausible details from the name: ``qwen2.5:0.5b`` is family qwen, 0.5B."""
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"digest must be 64 lower-case hex characters, got {digest!r}")
        letters = re.match(r"[A-Za-z]+", name.model)
        sized = re.fullmatch(r"(\d+(?:\.\d+)?)[bB]", name.tag)
        return cls(
            name=name,
            size=size,
            digest=digest or _fake_digest(name.key),
            modified_at=modified_at,
            family=family or (letters.group(0).lower() if letters else "llama"),
            parameter_size=parameter_size or (f"{sized.group(1)}B" if sized else "3.2B"),
            quantization_level=quantization_level,
            capabilities=tuple(capabilities),
            embedding_dim=embedding_dim,
        )

    @property
    def display(self) -> str:
        return self.name.display

    @property
    def internal_name(self) -> str:
        """The full name Ollama uses in capability errors: ``registry.ollama.ai/library/m:tag``."""
        name = self.name
        return f"{name.host}/{name.namespace}/{name.model}:{name.tag}"

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def tags_item(self) -> dict[str, Any]:
        """The object ``/api/tags`` lists for this model."""
        return {
            "name": self.display,
            "model": self.display,
            "modified_at": self.modified_at,
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }

    def layers(self) -> list[tuple[str, int]]:
        """Two blobs for pull progress: the weights and a small params/template blob."""
        small = min(487, max(self.size // 2, 1))
        return [
            (_fake_digest(self.name.key, "weights"), max(self.size - small, 1)),
            (_fake_digest(self.name.key, "params"), small),
        ]
