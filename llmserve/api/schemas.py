"""Wire types of the native API (``*Request`` / ``*Response``): strict, so unknown fields and
out-of-range values are refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator, SchemaError
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from llmserve import names
from llmserve.domain import (
    GenerationOptions,
    GenerationRequest,
    Message,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    new_call_id,
)
from llmserve.services.images import checked_base64, is_remote_url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: "Not blank" in a JSON Schema: some character that is not whitespace (a pattern searches, it
#: is not anchored). Python's ``str.strip`` also strips ``\x1c``-``\x1f``; JSON Schema's ``\s``
#: does not, so they are named.
NOT_BLANK_PATTERN = r"[^\s\x1c-\x1f]"


@dataclass(frozen=True, slots=True)
class NotBlank:
    """A string with some character that is not whitespace: checked (``ValueError(message)``
    when blank) and declared in the JSON Schema (``minLength`` and :data:`NOT_BLANK_PATTERN`)
    by this one annotation."""

    message: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(minLength=1, pattern=NOT_BLANK_PATTERN)
        return json_schema

    def _check(self, value: str) -> str:
        if not value.strip():
            raise ValueError(self.message)
        return value


#: Standard base64 (what ``services/images.checked_base64`` accepts), and a ``data:`` URL of
#: an image in it (``base64_of_data_url``), for the JSON Schema.
BASE64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
BASE64_PATTERN = f"^{BASE64}$"
IMAGE_DATA_URL_PATTERN = f"^data:(image/[^,]*)?;base64,{BASE64}$"
Base64Image = Annotated[str, Field(json_schema_extra={"pattern": BASE64_PATTERN})]

#: The ``format`` of every string that names a model: a client (or a test generating requests)
#: can tell those fields from other strings by it. An annotation only: JSON Schema validators
#: assert no format they do not know.
MODEL_NAME_FORMAT = "model-name"
#: A model name, declared with Ollama's naming rules (``names.PATTERN``); the model service
#: checks it (400 ``invalid_model_name``) before any backend call.
MODEL_NAME_SCHEMA: dict[str, Any] = {
    "minLength": 1,
    "maxLength": names.MAX_LENGTH,
    "pattern": names.PATTERN,
    "format": MODEL_NAME_FORMAT,
}
ModelName = Annotated[str, Field(json_schema_extra=MODEL_NAME_SCHEMA)]
#: The ``model`` of the OpenAI, Responses and Anthropic faces: any name; one that is neither
#: installed nor the active model is answered 404 ``model_not_found``.
InstalledModel = Annotated[
    str,
    Field(
        min_length=1,
        description="An installed model, or the active model.",
        json_schema_extra={"format": MODEL_NAME_FORMAT},
    ),
]


def invalid(message: str) -> PydanticCustomError:
    """A validation error the faces answer as an invalid value (``invalid_value``), worded by
    ``message`` alone (no "Value error, " prefix)."""
    return PydanticCustomError("invalid_value", message)


#: Integers every client and engine reads exactly: a JSON number is often read as a double
#: (JavaScript, JSON Schema validators), which holds integers exactly up to 2**53 - 1 (I-JSON's
#: interoperable range, RFC 7493); the engines read 64 bits.
INT_LIMIT = 2**53 - 1


Int64 = Annotated[StrictInt, Field(ge=-INT_LIMIT, le=INT_LIMIT)]


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: Reads an integer as JSON Schema means one: ``5`` or ``5.0`` (a number whose fraction is
#: zero), never ``5.5``, ``"5"`` or ``true``. It comes after the bounds, so that they stay
#: ``minimum``/``maximum`` in the JSON Schema.
WHOLE = BeforeValidator(_whole)
WholeInt = Annotated[StrictInt, Field(ge=-INT_LIMIT, le=INT_LIMIT), WHOLE]
NonNegativeInt = Annotated[StrictInt, Field(ge=0, le=INT_LIMIT), WHOLE]
PositiveInt = Annotated[StrictInt, Field(ge=1, le=INT_LIMIT), WHOLE]
_DURATION = r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$|^0$"


class GenerateOptions(_Strict):
    temperature: Annotated[StrictFloat, Field(ge=0, le=2)] | None = None
    top_p: Annotated[StrictFloat, Field(gt=0, le=1)] | None = None
    top_k: NonNegativeInt | None = None
    seed: WholeInt | None = None
    stop: str | Annotated[list[str], Field(max_length=8)] | None = None
    max_tokens: PositiveInt | None = None
    num_ctx: PositiveInt | None = Field(None, description="Context length in tokens (Ollama).")
    repeat_penalty: Annotated[StrictFloat, Field(ge=0, le=2)] | None = None
    presence_penalty: Annotated[StrictFloat, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[StrictFloat, Field(ge=-2, le=2)] | None = None
    keep_alive: WholeInt | StrictFloat | Annotated[str, Field(pattern=_DURATION)] | None = Field(
        None,
        description="How long Ollama keeps the model loaded: seconds, or a duration ('5m').",
    )

    def to_domain(self) -> GenerationOptions:
        stop: tuple[str, ...] = ()
        if isinstance(self.stop, str):
            stop = (self.stop,)
        elif self.stop:
            stop = tuple(self.stop)
        return GenerationOptions(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=stop,
            max_tokens=self.max_tokens,
            num_ctx=self.num_ctx,
            repeat_penalty=self.repeat_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            keep_alive=self.keep_alive,
        )


Format = Literal["json"] | dict[str, Any]
_FORMAT_DOC = '`"json"` for any JSON object, or a JSON Schema the answer must validate against.'


def response_format(value: Format | None) -> ResponseFormat | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return ResponseFormat("json_schema", schema=value)
    return ResponseFormat("json")


def schema_problem(schema: dict[str, Any]) -> str | None:
    """What makes ``schema`` not a valid JSON Schema (draft 2020-12), or None."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return str(exc.message)
    return None


def _check_schema(value: Format | None) -> Format | None:
    if isinstance(value, dict) and (problem := schema_problem(value)) is not None:
        raise ValueError(f"format is not a valid JSON Schema: {problem}")
    return value


class GenerateRequest(_Strict):
    prompt: Annotated[str, NotBlank("prompt must not be empty")] = Field(
        description="Required; not blank. Longer than MAX_PROMPT_CHARS → 413."
    )
    stream: StrictBool = Field(False, description="Server-Sent Events when true.")
    system: str | None = Field(None, description="Optional system prompt.")
    options: GenerateOptions | None = None
    format: Format | None = Field(None, description=_FORMAT_DOC)

    _schema = field_validator("format")(_check_schema)

    def to_domain(self) -> GenerationRequest:
        return GenerationRequest.from_prompt(
            self.prompt,
            self.system,
            (self.options or GenerateOptions()).to_domain(),
            response_format(self.format),
        )


class FunctionCall(_Strict):
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict, description="A JSON object.")


class ToolCallItem(_Strict):
    id: str | None = Field(None, description="Required on calls a tool message answers.")
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[Base64Image] | None = Field(
        None, description="Base64 image data (no data: prefix), for vision models."
    )
    tool_calls: list[ToolCallItem] | None = Field(None, description="On assistant messages.")
    tool_call_id: str | None = Field(None, description="On tool messages: the call answered.")

    def to_domain(self, max_image_bytes: int) -> Message:
        return Message(
            role=self.role,
            content=self.content,
            images=tuple(
                image if is_remote_url(image) else checked_base64(image, max_image_bytes)
                for image in self.images or ()
            ),
            tool_calls=tuple(
                ToolCall(call.id or new_call_id(), call.function.name, call.function.arguments)
                for call in self.tool_calls or ()
            ),
            tool_call_id=self.tool_call_id,
        )


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})

    _schema = field_validator("parameters")(_check_schema)


class ToolDefinition(_Strict):
    type: Literal["function"] = "function"
    function: FunctionDefinition

    def to_domain(self) -> Tool:
        f = self.function
        return Tool(f.name, f.description, f.parameters)


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoiceField = Literal["auto", "none", "required"] | NamedToolChoice


def tool_choice(value: ToolChoiceField | None) -> ToolChoice:
    if value is None:
        return ToolChoice()
    if isinstance(value, NamedToolChoice):
        return ToolChoice("function", value.function.name)
    return ToolChoice(value)


def conversation_rules(system_role: dict[str, Any], has_content: list[Any]) -> dict[str, Any]:
    """The generation service's rules for a conversation (``GenerationService.check``), in a
    JSON Schema for ``messages``: a message whose role is not ``system_role``, and a message
    with something in it (``has_content``: each way a message may hold something)."""
    return {
        "allOf": [
            {"contains": {"properties": {"role": {"not": system_role}}}},
            {"contains": {"anyOf": has_content}},
        ]
    }


def non_empty(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema: ``field`` is present and matches ``schema``."""
    return {"required": [field], "properties": {field: schema}}


def content_parts_refused(role: dict[str, Any], kinds: list[str]) -> dict[str, Any]:
    """JSON Schema: a message whose ``role`` matches ``role`` (a schema) holds no content part
    (or block) whose ``type`` is one of ``kinds``."""
    return {
        "if": non_empty("role", role),
        "then": {
            "properties": {
                "content": {
                    "not": {"type": "array", "contains": non_empty("type", {"enum": kinds})}
                }
            }
        },
    }


#: The generation service's rule for ``tool_choice``, in a JSON Schema for the request:
#: ``required`` or a named function needs tools (a named one must be among them).
TOOL_CHOICE_NEEDS_TOOLS: dict[str, Any] = {
    "if": non_empty("tool_choice", {"anyOf": [{"const": "required"}, {"type": "object"}]}),
    "then": non_empty("tools", {"type": "array", "minItems": 1}),
}
_NON_EMPTY_ARRAY = {"type": "array", "minItems": 1}


class ChatRequest(_Strict):
    model_config = ConfigDict(json_schema_extra=TOOL_CHOICE_NEEDS_TOOLS)

    messages: list[ChatMessage] = Field(
        min_length=1,
        description="At least one message that is not a system message, and one that holds "
        "text, images or tool calls.",
        json_schema_extra=conversation_rules(
            {"enum": ["system"]},
            [
                non_empty("content", {"type": "string", "pattern": NOT_BLANK_PATTERN}),
                non_empty("images", _NON_EMPTY_ARRAY),
                non_empty("tool_calls", _NON_EMPTY_ARRAY),
            ],
        ),
    )
    stream: StrictBool = Field(False, description="Server-Sent Events when true.")
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoiceField | None = Field(
        None, description="`auto` (default), `none`, `required`, or one named function."
    )
    format: Format | None = Field(None, description=_FORMAT_DOC)
    options: GenerateOptions | None = None

    _schema = field_validator("format")(_check_schema)

    def to_domain(self, max_image_bytes: int) -> GenerationRequest:
        return GenerationRequest(
            messages=tuple(m.to_domain(max_image_bytes) for m in self.messages),
            options=(self.options or GenerateOptions()).to_domain(),
            tools=tuple(tool.to_domain() for tool in self.tools or ()),
            tool_choice=tool_choice(self.tool_choice),
            response_format=response_format(self.format),
        )


class EmbedRequest(_Strict):
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=2048)]
    ) = Field(description="A text, or a list of texts.")

    @property
    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbedUsage(BaseModel):
    prompt_tokens: int


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    model: str
    usage: EmbedUsage


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(BaseModel):
    response: str
    model: str
    done_reason: str
    usage: Usage


def native_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Tool calls as the native API writes them (arguments as a JSON object)."""
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    tool_calls: list[ToolCallItem] | None = None


class ChatResponse(BaseModel):
    message: AssistantMessage
    model: str
    done_reason: str
    usage: Usage


class ErrorResponse(BaseModel):
    detail: str
    code: str


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    status: str
    checks: dict[str, str]
    #: Several backend servers: each one's state, by its base URL as configured.
    backends: dict[str, dict[str, object]] | None = None


class ModelItem(BaseModel):
    model: str
    name: str
    size: int
    modified_at: str | None
    digest: str | None
    active: bool
    built_in: bool
    #: The backend servers that have it (their base URLs as configured).
    backends: list[str] = []


class ModelListResponse(BaseModel):
    models: list[ModelItem]
    active: str


class ActiveModelResponse(BaseModel):
    model: str


class PullRequest(_Strict):
    name: ModelName = Field(description="Model name, e.g. `llama3.2` or `hf.co/org/repo:Q4_K_M`.")


class PullStatus(BaseModel):
    status: str


class MessageResponse(BaseModel):
    message: str
