"""Wire types of the OpenAI-compatible API: what OpenAI's SDKs send and read.

Requests are lenient where OpenAI's clients need it and strict where a silent difference would
mislead:

* unknown fields are ignored (SDKs and frameworks send extras such as ``user`` or penalties);
* parameters llmserve cannot honour (``n > 1``, ``logit_bias``, the legacy ``functions``,
  ``logprobs``, ``best_of``, ``echo``, ``suffix``) are refused with a message that names them.
  Each check is a field validator, so the error's location *is* the parameter and the
  envelope's ``param`` says which one (``openai_wire``).

Chat requests become the core conversation (:meth:`ChatCompletionRequest.to_domain`): content
parts (text, ``image_url`` with a ``data:`` URL, or an ``http(s)`` URL fetched under
``ALLOW_IMAGE_URLS``), assistant ``tool_calls`` (arguments: a JSON string of an object), tool
results, ``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``response_format``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llmserve.api.schemas import (
    IMAGE_DATA_URL_PATTERN,
    NOT_BLANK_PATTERN,
    TOOL_CHOICE_NEEDS_TOOLS,
    InstalledModel,
    NotBlank,
    PositiveInt,
    WholeInt,
    conversation_rules,
    invalid,
    non_empty,
    schema_problem,
)
from llmserve.domain import (
    GenerationOptions,
    GenerationRequest,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
)
from llmserve.domain import Message as CoreMessage
from llmserve.services.images import base64_of_data_url, is_remote_url

ROLES = ("system", "developer", "user", "assistant", "tool")
SYSTEM_ROLES = frozenset({"system", "developer"})


def _unsupported(name: str, why: str = "is not supported by this server") -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter", f"'{name}' {why}.")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: StrictBool = False


class ImageUrl(_Lenient):
    url: str = Field(
        description="A data: URL (base64); an http(s) URL only with ALLOW_IMAGE_URLS=true.",
        json_schema_extra={"pattern": IMAGE_DATA_URL_PATTERN},
    )
    detail: str | None = Field(None, description="Accepted and ignored.")

    @field_validator("url")
    @classmethod
    def _data_or_http(cls, url: str) -> str:
        if not url.startswith("data:") and not is_remote_url(url):
            raise invalid("an image URL must be a data: URL or an http(s):// URL")
        return url


class ContentPart(_Lenient):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "if": non_empty("type", {"const": "text"}),
                    "then": non_empty("text", {"type": "string"}),
                },
                {
                    "if": non_empty("type", {"const": "image_url"}),
                    "then": non_empty("image_url", {"type": "object"}),
                },
            ]
        }
    )

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None

    @model_validator(mode="after")
    def _complete(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise invalid("a text content part needs a string 'text'")
        if self.type == "image_url" and self.image_url is None:
            raise invalid("an image_url content part needs 'image_url': {'url': ...}")
        return self


class FunctionCall(_Lenient):
    name: str = Field(min_length=1)
    arguments: str = Field("{}", description="A JSON object, as a string.")

    @field_validator("arguments")
    @classmethod
    def _object(cls, text: str) -> str:
        _arguments(text)
        return text


class ToolCallItem(_Lenient):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


def _when_role(roles: list[str], then: dict[str, Any], *, among: bool = True) -> dict[str, Any]:
    role: dict[str, Any] = {"enum": roles} if among else {"not": {"enum": roles}}
    return {"if": non_empty("role", role), "then": then}


class Message(_Lenient):
    model_config = ConfigDict(
        json_schema_extra={
            # What ``_fits_role`` checks.
            "allOf": [
                _when_role(
                    ["assistant"],
                    {"properties": {"tool_calls": {"type": ["array", "null"], "maxItems": 0}}},
                    among=False,
                ),
                _when_role(["tool"], non_empty("tool_call_id", {"type": "string", "minLength": 1})),
                _when_role(
                    ["user"],
                    {
                        "properties": {
                            "content": {
                                "type": ["string", "array", "null"],
                                "items": {"properties": {"type": {"const": "text"}}},
                            }
                        }
                    },
                    among=False,
                ),
            ]
        }
    )

    role: str = Field(json_schema_extra={"enum": list(ROLES)})
    content: str | list[ContentPart] | None = Field(
        None, description="A string, or a list of text and image_url parts."
    )
    name: str | None = None
    tool_calls: list[ToolCallItem] | None = None
    tool_call_id: str | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in ROLES:
            raise invalid(f"role '{role}' is not supported; use one of {', '.join(ROLES)}")
        return role

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, content: Any) -> Any:
        """One clear error instead of one per member of the union."""
        if content is None or isinstance(content, str):
            return content
        if not isinstance(content, list):
            raise invalid("it must be a string or a list of content parts")
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "image_url"):
                raise invalid(
                    f"content parts of type '{kind}' are not supported, only text and image_url"
                )
            try:
                parts.append(ContentPart.model_validate(part))
            except ValidationError as exc:
                raise invalid(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None
        return parts

    @model_validator(mode="after")
    def _fits_role(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise invalid("only assistant messages may carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise invalid("a tool message needs the tool_call_id it answers")
        parts = self.content if isinstance(self.content, list) else []
        if self.role != "user" and any(part.type != "text" for part in parts):
            raise invalid(f"{self.role} messages may hold text parts only")
        return self

    def to_domain(self, max_image_bytes: int) -> CoreMessage:
        texts: list[str] = []
        images: list[str] = []
        if isinstance(self.content, str):
            texts.append(self.content)
        for part in self.content if isinstance(self.content, list) else ():
            if part.type == "text":
                texts.append(part.text or "")
            else:
                url = part.image_url.url if part.image_url is not None else ""
                images.append(_image(url, max_image_bytes))
        calls = tuple(
            ToolCall(call.id, call.function.name, _arguments(call.function.arguments))
            for call in self.tool_calls or ()
        )
        role = "system" if self.role in SYSTEM_ROLES else self.role
        return CoreMessage(
            role,  # type: ignore[arg-type]  # SYSTEM_ROLES became "system" above: a core role
            "".join(texts),
            images=tuple(images),
            tool_calls=calls,
            tool_call_id=self.tool_call_id,
        )


def _image(url: str, max_image_bytes: int) -> str:
    if url.startswith("data:"):
        return base64_of_data_url(url, max_image_bytes)  # InvalidRequestError: a 400
    return url  # http(s): fetched (or refused) by the generation service


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        raise invalid("tool call arguments must be a JSON object, as a string") from None
    if not isinstance(value, dict):
        raise invalid("tool call arguments must be a JSON object, as a string")
    return value


class FunctionDefinition(_Lenient):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None


class ToolDefinition(_Lenient):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Lenient):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormatParam(_Lenient):
    model_config = ConfigDict(
        json_schema_extra={
            "if": non_empty("type", {"const": "json_schema"}),
            "then": non_empty("json_schema", {"type": "object"}),
        }
    )

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormatParam:
        if self.type == "json_schema" and self.json_schema is None:
            raise invalid("a json_schema response_format needs 'json_schema'")
        if self.json_schema is not None:
            problem = schema_problem(self.json_schema.schema_)
            if problem is not None:
                raise invalid(f"json_schema.schema is not a valid JSON Schema: {problem}")
        return self

    def to_domain(self) -> ResponseFormat | None:
        if self.type == "text":
            return None
        if self.type == "json_object" or self.json_schema is None:
            return ResponseFormat("json")
        return ResponseFormat(
            "json_schema",
            schema=self.json_schema.schema_,
            name=self.json_schema.name,
            strict=bool(self.json_schema.strict),
        )


class CompletionParams(_Lenient):
    """What both generation routes accept."""

    model: InstalledModel
    max_tokens: PositiveInt | None = None
    temperature: Annotated[StrictFloat, Field(ge=0, le=2)] | None = None
    top_p: Annotated[StrictFloat, Field(gt=0, le=1)] | None = None
    seed: WholeInt | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(
        None, description="A string or a list of at most 4."
    )
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="Accepted and ignored.")
    n: WholeInt | None = Field(None, description="Only 1.", json_schema_extra={"enum": [1, None]})
    logit_bias: dict[str, Any] | None = Field(
        None, description="Not supported.", json_schema_extra={"maxProperties": 0}
    )
    logprobs: Any = Field(
        None, description="Not supported.", json_schema_extra={"enum": [None, False, 0]}
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, stop: Any) -> Any:
        if isinstance(stop, str):
            return [stop]
        if isinstance(stop, list) and len(stop) > 4:
            raise invalid("at most 4 stop sequences are allowed")
        return stop

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise _unsupported("n", "must be 1: this server returns one choice")
        return n

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, Any] | None) -> None:
        if value:
            raise _unsupported("logit_bias")

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> None:
        if value not in (None, False, 0):
            raise _unsupported("logprobs")

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def options(self, max_tokens: int | None = None) -> GenerationOptions:
        return GenerationOptions(
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=(self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ()),
            max_tokens=max_tokens or self.max_tokens,
        )


class ChatCompletionRequest(CompletionParams):
    model_config = ConfigDict(json_schema_extra=TOOL_CHOICE_NEEDS_TOOLS)

    messages: list[Message] = Field(
        min_length=1,
        description="At least one user or assistant message, and one that holds text, an "
        "image or tool calls.",
        json_schema_extra=conversation_rules(
            {"enum": sorted(SYSTEM_ROLES)},
            [
                non_empty("content", {"type": "string", "pattern": NOT_BLANK_PATTERN}),
                non_empty(
                    "content",
                    {
                        "type": "array",
                        "contains": {
                            "anyOf": [
                                non_empty("type", {"const": "image_url"}),
                                non_empty("text", {"type": "string", "pattern": NOT_BLANK_PATTERN}),
                            ]
                        },
                    },
                ),
                non_empty("tool_calls", {"type": "array", "minItems": 1}),
            ],
        ),
    )
    max_completion_tokens: PositiveInt | None = None
    presence_penalty: Annotated[StrictFloat, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[StrictFloat, Field(ge=-2, le=2)] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormatParam | None = None
    functions: list[Any] | None = Field(
        None, description="Legacy: not supported, use tools.", json_schema_extra={"maxItems": 0}
    )
    function_call: Any = Field(
        None,
        description="Legacy: not supported, use tool_choice.",
        json_schema_extra={"enum": [None, "none", "auto"]},
    )

    @field_validator("messages")
    @classmethod
    def _a_turn(cls, messages: list[Message]) -> list[Message]:
        if all(m.role in SYSTEM_ROLES for m in messages):
            raise invalid("there must be a user or assistant message")
        return messages

    @field_validator("functions", "function_call")
    @classmethod
    def _no_functions(cls, value: Any, info: ValidationInfo) -> None:
        if value not in (None, [], "none", "auto"):
            raise _unsupported(
                str(info.field_name), "(the legacy function API) is not supported: use tools"
            )

    @field_validator("tool_choice")
    @classmethod
    def _choice_names_a_tool(cls, choice: Any, info: ValidationInfo) -> Any:
        tools = info.data.get("tools") or []
        named = isinstance(choice, NamedToolChoice)
        if (named or choice == "required") and not tools:
            raise invalid("tool_choice needs tools to choose from")
        if named and choice.function.name not in {t.function.name for t in tools}:
            raise invalid(
                f"tool_choice names '{choice.function.name}', which is not among the tools"
            )
        return choice

    def to_domain(self, max_image_bytes: int) -> GenerationRequest:
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            core_choice = ToolChoice("function", choice.function.name)
        else:
            core_choice = ToolChoice(choice or "auto")
        options = dataclasses.replace(
            self.options(self.max_completion_tokens),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )
        return GenerationRequest(
            messages=tuple(m.to_domain(max_image_bytes) for m in self.messages),
            options=options,
            tools=tuple(
                Tool(t.function.name, t.function.description, t.function.parameters)
                for t in self.tools or ()
            ),
            tool_choice=core_choice,
            parallel_tool_calls=self.parallel_tool_calls is not False,
            response_format=self.response_format.to_domain() if self.response_format else None,
        )


class CompletionRequest(CompletionParams):
    prompt: Annotated[str, NotBlank("the prompt is empty")] = Field(
        description="A single string, not blank (lists and token arrays are not supported)."
    )
    best_of: WholeInt | None = Field(
        None, description="Only 1.", json_schema_extra={"enum": [1, None]}
    )
    echo: StrictBool | None = Field(
        None, description="Not supported.", json_schema_extra={"enum": [False, None]}
    )
    suffix: str | None = Field(
        None, description="Not supported.", json_schema_extra={"maxLength": 0}
    )

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_string(cls, prompt: Any) -> Any:
        if isinstance(prompt, list):
            raise _unsupported("prompt", "must be a single string; lists are not supported")
        return prompt

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None) -> None:
        if value not in (None, 1):
            raise _unsupported("best_of")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool | None) -> None:
        if value:
            raise _unsupported("echo")

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> None:
        if value:
            raise _unsupported("suffix")


class EmbeddingRequest(_Lenient):
    model: InstalledModel
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=2048)]
    ) = Field(description="A text or a list of 1 to 2048 texts (not token arrays), none empty.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: str | None = Field(None, description="Accepted and ignored.")

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        if isinstance(value, list) and any(not isinstance(item, str) for item in value):
            raise _unsupported("input", "must be a string or a list of strings (no token arrays)")
        if isinstance(value, list) and not 1 <= len(value) <= 2048:
            raise invalid("input must hold between 1 and 2048 texts")
        if value == "" or (isinstance(value, list) and "" in value):
            raise invalid("input texts must not be empty")
        return value

    @property
    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# -- responses -------------------------------------------------------------------------------


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallItem] | None = None
    refusal: None = None

    @model_serializer(mode="wrap")
    def _without_empty_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("tool_calls") is None:
            data.pop("tool_calls", None)  # OpenAI leaves the key out when there are none
        return data


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class CompletionChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: str


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of float32 (LE).")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: EmbeddingUsage


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmserve"
    #: llmserve's addition: the backend servers that have it (base URLs as configured).
    backends: list[str] = []


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorDetail
