"""Wire types of the native API (``*Request`` / ``*Response``): strict, so unknown fields and
out-of-range values are refused."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator, SchemaError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
)

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


#: Integers the engines can read (Go's int64, C's int64_t); larger ones would be their errors.
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
_DURATION = r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$|^0$"


class GenerateOptions(_Strict):
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[Int64, Field(ge=0)] | None = None
    seed: Int64 | None = None
    stop: str | Annotated[list[str], Field(max_length=8)] | None = None
    max_tokens: Annotated[Int64, Field(ge=1)] | None = None
    num_ctx: Annotated[Int64, Field(ge=1)] | None = Field(
        None, description="Context length in tokens (Ollama)."
    )
    repeat_penalty: Annotated[float, Field(ge=0, le=2)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    keep_alive: Int64 | StrictFloat | Annotated[str, Field(pattern=_DURATION)] | None = Field(
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


def _check_schema(value: Format | None) -> Format | None:
    if isinstance(value, dict):
        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"format is not a valid JSON Schema: {exc.message}") from None
    return value


class GenerateRequest(_Strict):
    prompt: str = Field(description="Required; not blank. Longer than MAX_PROMPT_CHARS → 413.")
    stream: StrictBool = Field(False, description="Server-Sent Events when true.")
    system: str | None = Field(None, description="Optional system prompt.")
    options: GenerateOptions | None = None
    format: Format | None = Field(None, description=_FORMAT_DOC)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value

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
    images: list[str] | None = Field(
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


class ChatRequest(_Strict):
    messages: list[ChatMessage] = Field(min_length=1)
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


class ModelItem(BaseModel):
    model: str
    name: str
    size: int
    modified_at: str | None
    digest: str | None
    active: bool
    built_in: bool


class ModelListResponse(BaseModel):
    models: list[ModelItem]
    active: str


class ActiveModelResponse(BaseModel):
    model: str


class PullRequest(_Strict):
    name: str = Field(description="Model name, e.g. `llama3.2` or `hf.co/org/repo:Q4_K_M`.")


class PullStatus(BaseModel):
    status: str


class MessageResponse(BaseModel):
    message: str
