"""Wire types of OpenAI's Responses API (``POST /v1/responses``, stateless).

``input`` is a string or a list of items: messages (``role``; content a string or ``input_text``
/ ``input_image`` parts, or the ``output_text`` parts of an earlier answer sent back),
``function_call`` items (``call_id``, ``name``, ``arguments``; their ``id`` and ``status`` as
the SDK sends them back) and ``function_call_output`` items (``call_id``, ``output``). Item and
tool types llmserve does not speak are refused with a message naming them; so is
``previous_response_id`` (nothing is stored: the client sends the whole conversation). Unknown
top-level fields are ignored, as on the chat route; ``store`` is accepted and ignored.

:meth:`ResponsesRequest.to_domain` maps the items onto the core conversation: ``instructions``
is the first (system) message, ``developer`` is ``system``, function calls join the assistant
turn before them, and every ``function_call_output`` answers a ``function_call`` with its
``call_id`` earlier in ``input``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llmserve import errors
from llmserve.api.openai_schemas import FunctionDefinition, JsonSchemaFormat
from llmserve.api.schemas import (
    IMAGE_DATA_URL_PATTERN,
    NOT_BLANK_PATTERN,
    TOOL_CHOICE_NEEDS_TOOLS,
    InstalledModel,
    NotBlank,
    PositiveInt,
    content_parts_refused,
    conversation_rules,
    invalid,
    non_empty,
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
from llmserve.services.images import base64_of_data_url, is_remote_url


def _unsupported(message: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter", message)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputText(_Lenient):
    type: Literal["input_text"]
    text: str


class OutputText(_Lenient):
    """The text part of an earlier answer, sent back (``annotations`` are ignored)."""

    type: Literal["output_text"]
    text: str


class InputImage(_Lenient):
    type: Literal["input_image"]
    image_url: str = Field(
        description="A data: URL (base64); an http(s) URL only with ALLOW_IMAGE_URLS=true.",
        json_schema_extra={"pattern": IMAGE_DATA_URL_PATTERN},
    )
    detail: str | None = Field(None, description="Accepted and ignored.")

    @field_validator("image_url")
    @classmethod
    def _data_or_http(cls, url: str) -> str:
        if not url.startswith("data:") and not is_remote_url(url):
            raise invalid("an image URL must be a data: URL or an http(s):// URL")
        return url


ContentPart = Annotated[InputText | OutputText | InputImage, Field(discriminator="type")]


class MessageItem(_Lenient):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                content_parts_refused({"not": {"const": "user"}}, ["input_image"]),
                content_parts_refused({"not": {"const": "assistant"}}, ["output_text"]),
            ]
        }
    )

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]

    @model_validator(mode="after")
    def _fits_role(self) -> MessageItem:
        for part in self.content if isinstance(self.content, list) else ():
            if part.type == "input_image" and self.role != "user":
                raise invalid(f"{self.role} messages may not hold input_image parts")
            if part.type == "output_text" and self.role != "assistant":
                raise invalid("only assistant messages may hold output_text parts")
        return self


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str = Field(
        description="A JSON object, as a string.",
        json_schema_extra={
            "contentMediaType": "application/json",
            "contentSchema": {"type": "object"},
        },
    )
    id: str | None = None
    status: str | None = None

    @field_validator("arguments")
    @classmethod
    def _object(cls, text: str) -> str:
        _arguments(text)
        return text


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputText] = Field(description="The result: a string or input_text parts.")
    id: str | None = None
    status: str | None = None

    @property
    def text(self) -> str:
        output = self.output
        return output if isinstance(output, str) else "".join(part.text for part in output)


def _item_kind(item: Any) -> str:
    """An item's ``type``; a message may leave it out (``{"role", "content"}``)."""
    kind = item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", None)
    return str(kind)


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(
        _item_kind,
        custom_error_type="invalid_value",
        custom_error_message="the item type is not supported: use message, function_call "
        "or function_call_output",
    ),
]


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        raise invalid("function call arguments must be a JSON object, as a string") from None
    if not isinstance(value, dict):
        raise invalid("function call arguments must be a JSON object, as a string")
    return value


class FunctionTool(FunctionDefinition):
    type: Literal["function"]


class NamedFunction(_Lenient):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormat(_Lenient):
    model_config = ConfigDict(
        json_schema_extra={
            "if": non_empty("type", {"const": "json_schema"}),
            "then": {
                "required": ["name", "schema"],
                "properties": {"name": {"type": "string"}, "schema": {"type": "object"}},
            },
        }
    )

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: StrictBool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema":
            if self.schema_ is None or not self.name:
                raise invalid("a json_schema format needs 'name' and 'schema'")
            JsonSchemaFormat.model_validate({"name": self.name, "schema": self.schema_})
        return self

    def to_domain(self) -> ResponseFormat | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return ResponseFormat("json")
        return ResponseFormat("json_schema", self.schema_, self.name, bool(self.strict))


class TextConfig(_Lenient):
    format: TextFormat | None = None
    verbosity: str | None = Field(None, description="Accepted and ignored.")


_NOT_BLANK = {"type": "string", "pattern": NOT_BLANK_PATTERN}
#: Each way an input item may hold something to answer (the generation service refuses a
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
                    non_empty("type", {"const": "input_image"}),
                ]
            },
        },
    ),
    non_empty("type", {"const": "function_call"}),
    non_empty("output", _NOT_BLANK),
    non_empty("output", {"type": "array", "contains": non_empty("text", _NOT_BLANK)}),
]


def _input_kind(value: Any) -> str:
    return "list" if isinstance(value, list) else "str"


#: ``input``: a string with something in it, or a list of items with something to answer; the
#: value's type picks the branch, so a refusal names the one rule broken (not "a valid string"
#: for a list whose item is refused).
Input = Annotated[
    Annotated[str, NotBlank("the prompt is empty"), Tag("str")]
    | Annotated[
        list[InputItem],
        Field(
            min_length=1,
            json_schema_extra=conversation_rules({"enum": ["system", "developer"]}, _HAS_CONTENT),
        ),
        Tag("list"),
    ],
    Discriminator(_input_kind),
]


class ResponsesRequest(_Lenient):
    model_config = ConfigDict(json_schema_extra=TOOL_CHOICE_NEEDS_TOOLS)

    model: InstalledModel
    input: Input = Field(
        description="A string, or a list of input items: at least one that is not a system "
        "message, and one that holds text, an image, a function call or its output."
    )
    instructions: str | None = Field(None, description="A system message before the input.")
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedFunction | None = None
    parallel_tool_calls: StrictBool | None = None
    text: TextConfig | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: Annotated[StrictFloat, Field(ge=0, le=2)] | None = None
    top_p: Annotated[StrictFloat, Field(gt=0, le=1)] | None = None
    stream: StrictBool = False
    store: StrictBool | None = Field(None, description="Accepted and ignored: nothing is stored.")
    metadata: dict[str, str] | None = Field(None, description="Echoed in the response.")
    user: str | None = Field(None, description="Accepted and ignored.")
    previous_response_id: None = Field(
        None, description="Not supported: the server is stateless; send the whole input."
    )
    background: Literal[False] | None = Field(None, description="Only false.")
    reasoning: dict[str, Any] | None = Field(
        None, description="Accepted; a model without reasoning ignores it."
    )

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools(cls, tools: Any) -> Any:
        for tool in tools if isinstance(tools, list) else ():
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise _unsupported(f"tools of type '{kind}' are not supported, only function")
        return tools

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _function_choice(cls, choice: Any) -> Any:
        if isinstance(choice, dict) and choice.get("type") != "function":
            raise _unsupported(f"tool_choice of type '{choice.get('type')}' is not supported")
        return choice

    @field_validator("background", mode="before")
    @classmethod
    def _foreground(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, bool):
            raise invalid("'background' must be a boolean")
        if value is True:
            raise _unsupported("'background' responses are not supported")
        return value

    @field_validator("input")
    @classmethod
    def _outputs_answer_calls(cls, items: str | list[Any]) -> str | list[Any]:
        """Every ``function_call_output`` answers a ``function_call`` earlier in ``input``."""
        seen: set[str] = set()
        for index, item in enumerate(items if isinstance(items, list) else ()):
            if item.type == "function_call":
                seen.add(item.call_id)
            elif item.type == "function_call_output" and item.call_id not in seen:
                raise invalid(
                    f"input.[{index}].call_id: '{item.call_id}' answers no earlier function_call"
                )
        return items

    @field_validator("tool_choice")
    @classmethod
    def _choice_names_a_tool(cls, choice: Any, info: ValidationInfo) -> Any:
        tools = info.data.get("tools") or []
        if (isinstance(choice, NamedFunction) or choice == "required") and not tools:
            raise invalid("tool_choice needs tools to choose from")
        if isinstance(choice, NamedFunction) and choice.name not in {t.name for t in tools}:
            raise invalid(f"tool_choice names '{choice.name}', which is not among the tools")
        return choice

    @field_validator("previous_response_id", mode="before")
    @classmethod
    def _stateless(cls, value: Any) -> None:
        """A capability refusal (400 ``unsupported``), not a malformed field: raised as the
        llmserve error itself, which the route answers in OpenAI's envelope."""
        if value is not None:
            raise errors.UnsupportedError(
                "'previous_response_id' is not supported: this server stores no responses; "
                "send the whole conversation in 'input'"
            )

    def to_domain(self, max_image_bytes: int) -> GenerationRequest:
        messages: list[Message] = []
        if self.instructions:
            messages.append(Message("system", self.instructions))
        items = (
            self.input
            if isinstance(self.input, list)
            else [MessageItem(role="user", content=self.input)]
        )
        for item in items:
            if item.type == "message":
                messages.append(_message(item, max_image_bytes))
            elif item.type == "function_call":
                call = ToolCall(item.call_id, item.name, _arguments(item.arguments))
                last = messages[-1] if messages else None
                if last is not None and last.role == "assistant":
                    messages[-1] = dataclasses.replace(last, tool_calls=(*last.tool_calls, call))
                else:
                    messages.append(Message("assistant", tool_calls=(call,)))
            else:
                messages.append(Message("tool", item.text, tool_call_id=item.call_id))
        choice = self.tool_choice
        fmt = self.text.format if self.text is not None else None
        return GenerationRequest(
            messages=tuple(messages),
            options=GenerationOptions(
                temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_output_tokens
            ),
            tools=tuple(Tool(t.name, t.description, t.parameters) for t in self.tools or ()),
            tool_choice=(
                ToolChoice("function", choice.name)
                if isinstance(choice, NamedFunction)
                else ToolChoice(choice or "auto")
            ),
            parallel_tool_calls=self.parallel_tool_calls is not False,
            response_format=fmt.to_domain() if fmt is not None else None,
        )


def _message(item: MessageItem, max_image_bytes: int) -> Message:
    role = "system" if item.role in ("system", "developer") else item.role
    if isinstance(item.content, str):
        return Message(role, item.content)  # type: ignore[arg-type]
    texts: list[str] = []
    images: list[str] = []
    for part in item.content:
        if part.type == "input_image":
            url = part.image_url
            images.append(
                base64_of_data_url(url, max_image_bytes) if url.startswith("data:") else url
            )
        else:
            texts.append(part.text)
    return Message(role, "".join(texts), tuple(images))  # type: ignore[arg-type]


# -- answers (for the OpenAPI document; the wire module builds them) ---------------------------


class OutputTextPart(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputTextPart]


class OutputFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    status: Literal["in_progress", "completed", "incomplete"]
    call_id: str
    name: str
    arguments: str


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    model: str
    output: list[OutputMessage | OutputFunctionCall]
    usage: ResponseUsage | None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
