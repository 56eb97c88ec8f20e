"""Wire types of Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``):
what Claude Code and the Anthropic SDKs send, and how it becomes the core conversation.

Blocks are told apart by ``type``; a block type llmserve does not speak (``document``,
``thinking``, server tools…) is refused with a message naming it, as is a tool whose ``type`` is
not a custom one. Unknown top-level fields are ignored (newer clients send more), the known ones
that llmserve cannot honour are refused. ``thinking`` and ``output_config.effort`` are accepted:
a model without reasoning ignores them.

:meth:`MessagesRequest.to_domain` maps a conversation onto the core: ``system`` becomes the first
message; a user turn's ``tool_result`` blocks become ``tool`` messages (each answering the
``tool_use`` with its ``tool_use_id``, which must come earlier), its text and images one user
message; an assistant turn's ``tool_use`` blocks its tool calls, with their ids unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llmserve import errors
from llmserve.api.schemas import (
    BASE64_PATTERN,
    NOT_BLANK_PATTERN,
    InstalledModel,
    NonNegativeInt,
    PositiveInt,
    content_parts_refused,
    conversation_rules,
    invalid,
    non_empty,
    schema_problem,
)
from llmserve.domain import (
    GenerationOptions,
    GenerationRequest,
    Message,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
)
from llmserve.services.images import checked_base64, is_remote_url


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextBlock(_Lenient):
    type: Literal["text"]
    text: str


class ImageSource(_Lenient):
    model_config = ConfigDict(
        json_schema_extra={
            "if": non_empty("type", {"const": "base64"}),
            "then": non_empty("data", {"type": "string", "minLength": 1}),
        }
    )

    type: Literal["base64", "url"] = Field(
        description="A base64 source; a url source only with ALLOW_IMAGE_URLS=true.",
        json_schema_extra={"const": "base64"},
    )
    media_type: str | None = Field(
        None,
        description="image/jpeg, image/png, image/gif, image/webp",
        json_schema_extra={"pattern": "^image/"},
    )
    data: str | None = Field(
        None,
        description="Base64 (a base64 source).",
        json_schema_extra={"pattern": BASE64_PATTERN},
    )
    url: str | None = Field(None, description="An http(s) URL (a url source, ALLOW_IMAGE_URLS).")

    @model_validator(mode="after")
    def _complete(self) -> ImageSource:
        if self.type == "base64" and not self.data:
            raise invalid("a base64 image source needs 'data'")
        if self.type == "url" and not (self.url and is_remote_url(self.url)):
            raise invalid("a url image source needs an http(s) 'url'")
        if self.media_type is not None and not self.media_type.startswith("image/"):
            raise invalid(f"'{self.media_type}' is not an image type")
        return self


class ImageBlock(_Lenient):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_Lenient):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any] = Field(description="The call's arguments: a JSON object.")


class ToolResultBlock(_Lenient):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock] | None = Field(None, description="A string or text blocks.")
    is_error: StrictBool | None = None

    @property
    def text(self) -> str:
        content = self.content
        text = content if isinstance(content, str) else "".join(b.text for b in content or ())
        return f"Error: {text}" if self.is_error else text


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")
]


BLOCK_TYPES = ("text", "image", "tool_use", "tool_result")
_BLOCKS: TypeAdapter[list[ContentBlock]] = TypeAdapter(list[ContentBlock])


class InputMessage(_Lenient):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                content_parts_refused({"const": "assistant"}, ["image", "tool_result"]),
                content_parts_refused({"const": "user"}, ["tool_use"]),
            ]
        }
    )

    role: Literal["user", "assistant"]
    content: str | list[ContentBlock] = Field(description="A string, or a list of blocks.")

    @field_validator("content", mode="before")
    @classmethod
    def _blocks(cls, content: Any) -> Any:
        """One clear error naming the block, instead of one per member of the union."""
        if not isinstance(content, list):
            return content
        for index, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind not in BLOCK_TYPES:
                raise invalid(
                    f"block {index}: blocks of type '{kind}' are not supported here; use "
                    + ", ".join(BLOCK_TYPES)
                )
        try:
            return _BLOCKS.validate_python(content)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"] if p not in BLOCK_TYPES)
            raise invalid(f"block {where}: {first['msg']}") from None

    @model_validator(mode="after")
    def _fits_role(self) -> InputMessage:
        for block in self.content if isinstance(self.content, list) else ():
            if self.role == "assistant" and block.type in ("image", "tool_result"):
                raise invalid(f"assistant messages may not hold {block.type} blocks")
            if self.role == "user" and block.type == "tool_use":
                raise invalid("user messages may not hold tool_use blocks")
        return self


class ToolDefinition(_Lenient):
    type: Literal["custom"] | None = Field(
        None, description="Only custom (client) tools; server tools are not supported."
    )
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    input_schema: dict[str, Any] = Field(description="A JSON Schema object.")


class ToolChoiceParam(_Lenient):
    model_config = ConfigDict(
        json_schema_extra={
            "if": non_empty("type", {"const": "tool"}),
            "then": non_empty("name", {"type": "string", "minLength": 1}),
        }
    )

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(None, description="The tool, for type 'tool': one of the tools.")
    disable_parallel_tool_use: StrictBool | None = None

    @model_validator(mode="after")
    def _named(self) -> ToolChoiceParam:
        if self.type == "tool" and not self.name:
            raise invalid("tool_choice of type 'tool' needs a 'name'")
        return self

    def to_domain(self) -> ToolChoice:
        if self.type == "tool":
            return ToolChoice("function", self.name)
        return ToolChoice({"auto": "auto", "any": "required", "none": "none"}[self.type])  # type: ignore[arg-type]


class JsonOutputFormat(_Lenient):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        problem = schema_problem(schema)
        if problem is not None:
            raise invalid(f"not a valid JSON Schema: {problem}")
        return schema


class OutputConfig(_Lenient):
    effort: str | None = Field(None, description="Accepted; a model without it ignores it.")
    format: JsonOutputFormat | None = None


class Metadata(_Lenient):
    user_id: str | None = None


_NOT_BLANK = {"type": "string", "pattern": NOT_BLANK_PATTERN}
#: Each way a message may hold something to answer (the generation service refuses a
#: conversation with nothing in it).
_HAS_CONTENT: list[Any] = [
    non_empty("content", _NOT_BLANK),
    non_empty(
        "content",
        {
            "type": "array",
            "contains": {
                "anyOf": [
                    non_empty("text", _NOT_BLANK),
                    non_empty("type", {"enum": ["image", "tool_use"]}),
                    non_empty("content", _NOT_BLANK),
                    non_empty("is_error", {"const": True}),
                    non_empty(
                        "content", {"type": "array", "contains": non_empty("text", _NOT_BLANK)}
                    ),
                ]
            },
        },
    ),
]


class ConversationParams(_Lenient):
    """What both routes read: the model and the conversation."""

    model_config = ConfigDict(
        json_schema_extra={  # a forced or named tool needs tools (a named one among them)
            "if": non_empty("tool_choice", non_empty("type", {"enum": ["any", "tool"]})),
            "then": non_empty("tools", {"type": "array", "minItems": 1}),
        }
    )

    model: InstalledModel
    messages: list[InputMessage] = Field(
        min_length=1,
        description="At least one message that holds text, an image, a tool call or a result.",
        json_schema_extra=conversation_rules({"const": "system"}, _HAS_CONTENT),
    )
    system: str | list[TextBlock] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: dict[str, Any] | None = Field(
        None, description="Accepted; a model without reasoning ignores it."
    )
    output_config: OutputConfig | None = None
    mcp_servers: Annotated[list[Any], Field(max_length=0)] | None = Field(
        None, description="Not supported (only an empty list)."
    )
    container: None = Field(None, description="Not supported.")

    @field_validator("mcp_servers", "container", mode="before")
    @classmethod
    def _refused(cls, value: Any) -> Any:
        if value is not None and value != []:
            raise PydanticCustomError("unsupported", "this server does not support it")
        return value

    @model_validator(mode="after")
    def _results_answer_calls(self) -> ConversationParams:
        """Every ``tool_result`` answers a ``tool_use`` of an earlier message."""
        seen: set[str] = set()
        for m, message in enumerate(self.messages):
            blocks = message.content if isinstance(message.content, list) else []
            for b, block in enumerate(blocks):
                if block.type == "tool_result" and block.tool_use_id not in seen:
                    raise invalid(
                        f"messages.{m}.content.{b}.tool_use_id: '{block.tool_use_id}' answers"
                        " no earlier tool_use block"
                    )
            seen.update(block.id for block in blocks if block.type == "tool_use")
        choice = self.tool_choice
        names = {tool.name for tool in self.tools or ()}
        if choice is not None and choice.type == "tool" and choice.name not in names:
            raise invalid(f"tool_choice names '{choice.name}', which is not among the tools")
        return self

    def to_domain(self, max_image_bytes: int, options: GenerationOptions) -> GenerationRequest:
        messages: list[Message] = []
        system = self.system
        if system:
            text = system if isinstance(system, str) else "\n\n".join(b.text for b in system)
            messages.append(Message("system", text))
        for message in self.messages:
            messages.extend(_core_messages(message, max_image_bytes))
        choice = self.tool_choice
        fmt = self.output_config.format if self.output_config is not None else None
        return GenerationRequest(
            messages=tuple(messages),
            options=options,
            tools=tuple(
                Tool(t.name, t.description, t.input_schema or {"type": "object"})
                for t in self.tools or ()
            ),
            tool_choice=choice.to_domain() if choice is not None else ToolChoice(),
            parallel_tool_calls=not (choice is not None and choice.disable_parallel_tool_use),
            response_format=ResponseFormat("json_schema", schema=fmt.schema_) if fmt else None,
        )


def _core_messages(message: InputMessage, max_image_bytes: int) -> list[Message]:
    content = message.content
    if isinstance(content, str):
        return [Message(message.role, content)]
    texts: list[str] = []
    images: list[str] = []
    calls: list[ToolCall] = []
    out: list[Message] = []
    for block in content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "image":
            images.append(_image(block.source, max_image_bytes))
        elif block.type == "tool_use":
            calls.append(ToolCall(block.id, block.name, block.input))
        else:
            out.append(Message("tool", block.text, tool_call_id=block.tool_use_id))
    if texts or images or calls or not out:
        out.append(Message(message.role, "".join(texts), tuple(images), tuple(calls)))
    return out


def _image(source: ImageSource, max_image_bytes: int) -> str:
    if source.type == "url":
        return source.url or ""  # fetched (or refused) by the generation service
    try:
        return checked_base64(source.data or "", max_image_bytes)
    except errors.InvalidRequestError as exc:
        raise errors.InvalidRequestError(f"image source: {exc.detail}") from None


class MessagesRequest(ConversationParams):
    """``POST /v1/messages``."""

    max_tokens: PositiveInt = Field(description="Required, as Anthropic requires it.")
    stop_sequences: list[str] | None = Field(None, max_length=8)
    temperature: Annotated[StrictFloat, Field(ge=0, le=1)] | None = None
    top_p: Annotated[StrictFloat, Field(gt=0, le=1)] | None = None
    top_k: NonNegativeInt | None = None
    stream: StrictBool = False
    metadata: Metadata | None = None
    service_tier: str | None = Field(None, description="Accepted and ignored.")

    def options(self) -> GenerationOptions:
        return GenerationOptions(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=tuple(self.stop_sequences or ()),
            max_tokens=self.max_tokens,
        )


class CountTokensRequest(ConversationParams):
    """``POST /v1/messages/count_tokens``: the conversation without sampling options."""


# -- answers -----------------------------------------------------------------------------------


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class TextContent(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseContent(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageObject(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextContent | ToolUseContent]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(BaseModel):
    input_tokens: int


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorEnvelope(BaseModel):
    type: Literal["error"] = "error"
    error: ErrorDetail
