"""Request bodies of llmserve's Ollama API, read the way Ollama reads them.

Ollama decodes a body as JSON whatever its ``Content-Type``, ignores unknown fields, treats a
body of ``null`` as an empty request and answers every refusal with 400 ``{"error": "…"}``; so
these models ignore extra fields, and :func:`parse_body` turns every decoding or validation
failure into an ``InvalidRequestError`` (never FastAPI's 422). Each ``to_domain`` builds the
core conversation: known options become :class:`~llmserve.domain.GenerationOptions` fields,
the others stay in ``extra``; Ollama's own top-level fields go to
:class:`~llmserve.domain.OllamaExtras`, so the Ollama backend receives them untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from llmserve import errors
from llmserve.api.schemas import (
    BASE64_PATTERN,
    MODEL_NAME_SCHEMA,
    NOT_BLANK_PATTERN,
    WHOLE,
    FunctionDefinition,
    NonNegativeInt,
    PositiveInt,
    ToolDefinition,
    WholeInt,
    _check_schema,
    conversation_rules,
    non_empty,
)
from llmserve.domain import (
    GenerationOptions,
    GenerationRequest,
    Message,
    OllamaExtras,
    ResponseFormat,
    ToolCall,
)
from llmserve.services.images import checked_base64

_T = TypeVar("_T", bound=BaseModel)

#: A Go duration (``"5m"``, ``"1h30m"``, ``"-1s"``, ``"0"``): a string without a unit is refused.
_DURATION = re.compile(r"[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+|[-+]?0")


def _duration(value: Any) -> Any:
    if isinstance(value, str) and not _DURATION.fullmatch(value):
        unit = "missing unit in" if value.lstrip("+-").replace(".", "").isdigit() else "invalid"
        raise ValueError(f'time: {unit} duration "{value}"')
    return value


#: ``keep_alive``: seconds (negative: forever), or a Go duration string.
KeepAlive = Annotated[
    StrictInt
    | StrictFloat
    | Annotated[StrictStr, Field(json_schema_extra={"pattern": f"^(?:{_DURATION.pattern})$"})],
    AfterValidator(_duration),
]
_BASE64 = re.compile(BASE64_PATTERN)


def _base64(value: str) -> str:
    # Checked as the body is read, as Ollama does: a request that only loads the model (no
    # prompt) is refused for a bad image too.
    if not _BASE64.fullmatch(value):
        raise ValueError("an image is not valid base64 data")
    return value


Base64 = Annotated[
    StrictStr, Field(json_schema_extra={"pattern": BASE64_PATTERN}), AfterValidator(_base64)
]
#: A model name (the routes check it, 400, before any backend call).
ModelName = Annotated[StrictStr, Field(json_schema_extra=MODEL_NAME_SCHEMA)]
_ROLES = ("system", "user", "assistant", "tool")


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


def requires(*fields: str) -> Callable[[dict[str, Any]], None]:
    """A model's ``json_schema_extra``: ``fields`` are required. The body reads without them
    (Ollama's defaults), but the route refuses it (``model is required``)."""

    def extra(schema: dict[str, Any]) -> None:
        schema["required"] = sorted({*schema.get("required", ()), *fields})

    return extra


Number = StrictInt | StrictFloat
#: ``think``: a switch, or a level for the models that have levels.
Think = StrictBool | Literal["low", "medium", "high", "max"]


def parse_body(raw: bytes, model: type[_T]) -> _T:
    """``raw`` as ``model``, or a 400 with Ollama's kind of message."""
    if not raw:
        raise errors.InvalidRequestError("missing request body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidRequestError(f"invalid JSON: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise errors.InvalidRequestError(
            f"the request body must be a JSON object, not {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise errors.InvalidRequestError(validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    """The first problem, with where it is: ``options.temperature: Input should be …``."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OllamaOptions(BaseModel):
    """``options``: the sampling options llmserve knows, type-checked; the rest kept as sent."""

    model_config = ConfigDict(extra="allow")

    temperature: Annotated[Number, Field(ge=0)] | None = None
    top_p: Annotated[Number, Field(ge=0, le=1)] | None = None
    top_k: NonNegativeInt | None = None
    seed: WholeInt | None = None
    num_predict: WholeInt | None = None
    num_ctx: PositiveInt | None = None
    repeat_penalty: Number | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    stop: StrictStr | list[StrictStr] | None = None

    def to_domain(self, keep_alive: float | str | None) -> GenerationOptions:
        extra = dict(self.model_extra or {})
        max_tokens = self.num_predict
        if max_tokens is not None and max_tokens <= 0:
            # -1 (no limit) and -2 (fill the context) are Ollama's own: sent as they came.
            extra["num_predict"], max_tokens = max_tokens, None
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenerationOptions(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=stop,
            max_tokens=max_tokens,
            num_ctx=self.num_ctx,
            repeat_penalty=self.repeat_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            keep_alive=keep_alive,
            extra=extra,
        )


class OllamaFunctionCall(_Lenient):
    index: WholeInt | None = None
    name: StrictStr = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class OllamaToolCall(_Lenient):
    id: StrictStr | None = None
    function: OllamaFunctionCall


class OllamaMessage(_Lenient):
    role: StrictStr = Field(
        description="system, user, assistant or tool, in any case.",
        json_schema_extra={"pattern": f"^({'|'.join(_any_case(r) for r in _ROLES)})$"},
    )
    content: StrictStr = ""
    images: list[Base64] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: StrictStr | None = None
    tool_call_id: StrictStr | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, value: str) -> str:
        role = value.lower()  # Ollama lower-cases roles
        if role not in _ROLES:
            raise ValueError(f"unknown role {value!r}: system, user, assistant or tool")
        return role

    def to_domain(self, max_image_bytes: int) -> Message:
        return Message(
            role=self.role,  # type: ignore[arg-type]  # checked above
            content=self.content,
            images=tuple(checked_base64(image, max_image_bytes) for image in self.images or ()),
            # An Ollama client may send calls without an id (Ollama reads the name): none is
            # made up, so Ollama receives the calls as they came.
            tool_calls=tuple(
                ToolCall(call.id or "", call.function.name, call.function.arguments)
                for call in self.tool_calls or ()
            ),
            tool_call_id=self.tool_call_id,
            tool_name=self.tool_name,
        )


class OllamaFunction(FunctionDefinition):
    """The native API's function definition, with unknown fields ignored (Ollama's way)."""

    model_config = ConfigDict(extra="ignore")


class OllamaTool(ToolDefinition):
    model_config = ConfigDict(extra="ignore")

    function: OllamaFunction


def _format(value: Any) -> ResponseFormat | None:
    if value is None or value == "":
        return None
    if value == "json":
        return ResponseFormat("json")
    if isinstance(value, dict):
        return ResponseFormat("json_schema", schema=value)
    raise ValueError(f'invalid format: {value!r}; expected "json" or a valid JSON Schema object')


class _Generation(_Lenient):
    """What generate and chat share."""

    model_config = ConfigDict(json_schema_extra=requires("model"))

    model: ModelName = ""
    stream: StrictBool = True
    format: Any = Field(
        None,
        description='`"json"`, or a JSON Schema the answer must validate against.',
        json_schema_extra={"anyOf": [{"enum": ["", "json", None]}, {"type": "object"}]},
    )
    options: OllamaOptions | None = None
    keep_alive: KeepAlive | None = None
    think: Think | None = None
    truncate: StrictBool | None = None
    shift: StrictBool | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20), WHOLE] | None = None

    @field_validator("format")
    @classmethod
    def _valid_format(cls, value: Any) -> Any:
        _format(value)
        _check_schema(value)
        return value

    #: The top-level fields the core has no concept of, passed to Ollama as sent.
    FIELDS: ClassVar[tuple[str, ...]] = ("think", "truncate", "shift", "logprobs", "top_logprobs")

    @property
    def unloads(self) -> bool:
        """``keep_alive`` says "unload now" (``0``, ``"0"``, ``"0s"``…)."""
        value = self.keep_alive
        if isinstance(value, str):
            return value.lstrip("+-").rstrip("nsuµμmh").strip("0.") == ""
        return value == 0

    def _extras(self, endpoint: Literal["chat", "generate"]) -> OllamaExtras:
        fields = {
            name: getattr(self, name)
            for name in self.FIELDS
            if name in self.model_fields_set and getattr(self, name) is not None
        }
        return OllamaExtras(endpoint=endpoint, fields=fields)

    def _options(self) -> GenerationOptions:
        return (self.options or OllamaOptions()).to_domain(self.keep_alive)


#: The generation service's rule (a prompt with something in it), for a prompt that is not
#: empty (an empty one only loads the model): text, an image, or a system prompt.
_PROMPT_WITH_CONTENT = {
    "if": non_empty("prompt", {"minLength": 1, "not": {"pattern": NOT_BLANK_PATTERN}}),
    "then": {
        "anyOf": [
            non_empty("images", {"type": "array", "minItems": 1}),
            non_empty("system", {"type": "string", "pattern": NOT_BLANK_PATTERN}),
        ]
    },
}


#: Ollama's rule for ``raw``: the prompt goes to the model as it is, so there is no template, no
#: system prompt and no context to add to it (``maxLength``/``maxItems`` pass ``null``).
_RAW_ALONE = {
    "if": non_empty("raw", {"const": True}),
    "then": {
        "properties": {
            "system": {"maxLength": 0},
            "template": {"maxLength": 0},
            "context": {"maxItems": 0},
        }
    },
}
_RAW_ALONE_MESSAGE = "raw mode does not support template, system, or context"


#: Requests the API reference shows (and a contract test sends): a whole answer, and a stream.
_GENERATE_EXAMPLES = [
    {"model": "llama3.2", "prompt": "Why is the sky blue?", "stream": stream}
    for stream in (False, True)
]


def _generate_schema(schema: dict[str, Any]) -> None:
    requires("model")(schema)
    # Both rules as one conditional (the raw rule in each branch): a lone top-level if/then is
    # what request generators cover best; under allOf they hardly produce a valid request.
    schema.update(
        {
            "if": _PROMPT_WITH_CONTENT["if"],
            "then": {**_PROMPT_WITH_CONTENT["then"], **_RAW_ALONE},
            "else": _RAW_ALONE,
            "examples": _GENERATE_EXAMPLES,
        }
    )


class OllamaGenerateRequest(_Generation):
    model_config = ConfigDict(json_schema_extra=_generate_schema)

    prompt: StrictStr = ""
    suffix: StrictStr | None = None
    system: StrictStr | None = None
    template: StrictStr | None = None
    context: list[WholeInt] | None = None
    raw: StrictBool | None = None
    images: list[Base64] | None = None

    FIELDS = (*_Generation.FIELDS, "suffix", "template", "context", "raw")

    @model_validator(mode="after")
    def _raw_alone(self) -> OllamaGenerateRequest:
        if self.raw and (self.template or self.system or self.context):
            raise ValueError(_RAW_ALONE_MESSAGE)  # Ollama's words: it refuses them too
        return self

    @property
    def loads_only(self) -> bool:
        """No prompt: Ollama loads the model (or unloads it, with ``keep_alive`` 0)."""
        return not self.prompt

    def to_domain(self, max_image_bytes: int) -> GenerationRequest:
        images = tuple(checked_base64(image, max_image_bytes) for image in self.images or ())
        user = Message("user", self.prompt, images=images)
        messages = (Message("system", self.system), user) if self.system is not None else (user,)
        return GenerationRequest(
            messages,
            options=self._options(),
            response_format=_format(self.format),
            ollama=self._extras("generate"),
        )


_NON_EMPTY = {"type": "array", "minItems": 1}


_CHAT_EXAMPLES = [
    {"model": "llama3.2", "messages": [{"role": "user", "content": "Hi!"}], "stream": stream}
    for stream in (False, True)
]


def _chat_schema(schema: dict[str, Any]) -> None:
    requires("model")(schema)
    schema["examples"] = _CHAT_EXAMPLES


class OllamaChatRequest(_Generation):
    model_config = ConfigDict(json_schema_extra=_chat_schema)

    messages: list[OllamaMessage] = Field(
        default_factory=list,
        description="None (the model is loaded), or at least one message that is not a system "
        "message and one that holds text, images or tool calls.",
        json_schema_extra={
            "anyOf": [
                {"maxItems": 0},
                conversation_rules(
                    {"pattern": f"^{_any_case('system')}$"},
                    [
                        non_empty("content", {"type": "string", "pattern": NOT_BLANK_PATTERN}),
                        non_empty("images", _NON_EMPTY),
                        non_empty("tool_calls", _NON_EMPTY),
                    ],
                ),
            ]
        },
    )
    tools: list[OllamaTool] | None = None

    @property
    def loads_only(self) -> bool:
        return not self.messages

    def to_domain(self, max_image_bytes: int) -> GenerationRequest:
        return GenerationRequest(
            messages=tuple(m.to_domain(max_image_bytes) for m in self.messages),
            options=self._options(),
            tools=tuple(tool.to_domain() for tool in self.tools or ()),
            response_format=_format(self.format),
            ollama=self._extras("chat"),
        )


class OllamaEmbedRequest(_Lenient):
    model_config = ConfigDict(json_schema_extra=requires("model"))

    model: ModelName = ""
    input: StrictStr | list[StrictStr] = Field(default_factory=list)
    truncate: StrictBool | None = None
    dimensions: PositiveInt | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive | None = None

    @property
    def inputs(self) -> list[str]:
        """The texts to embed; Ollama answers ``[]`` for an empty string or list."""
        if isinstance(self.input, str):
            return [self.input] if self.input else []
        return list(self.input)


class OllamaEmbeddingsRequest(_Lenient):
    """The legacy ``/api/embeddings``: one ``prompt``, one vector."""

    model_config = ConfigDict(json_schema_extra=requires("model"))

    model: ModelName = ""
    prompt: StrictStr = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive | None = None
