"""Wire types of the OpenAI-compatible API (SPEC §9): what OpenAI's SDKs send and read.

Requests are lenient where OpenAI's clients need it and strict where a silent difference would
mislead:

* unknown fields are ignored (SDKs and frameworks send extras such as ``user`` or penalties);
* parameters llmserve cannot honour (``n > 1``, ``logit_bias``, tools and functions,
  ``logprobs``, a ``response_format`` other than text, ``best_of``, ``echo``, ``suffix``) are
  refused with a message that names them. Each check is a field validator, so the error's
  location *is* the parameter and the envelope's ``param`` says which one (``openai_wire``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from llmserve.domain import GenerationOptions
from llmserve.services.chat import SYSTEM_ROLES, ChatMessage

ROLES = ("system", "developer", "user", "assistant")


def _unsupported(name: str, why: str = "is not supported by this server") -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter", f"'{name}' {why}.")


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_value", message)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: StrictBool = False


class Message(_Lenient):
    role: str
    content: str = Field("", description="A string, or a list of text parts (joined).")
    name: str | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in ROLES:
            raise _invalid(f"role '{role}' is not supported; use one of {', '.join(ROLES)}")
        return role

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, content: Any) -> str:
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise _invalid(f"content parts of type '{kind}' are not supported, only text")
                text = part.get("text")
                if not isinstance(text, str):
                    raise _invalid("a text content part needs a string 'text'")
                texts.append(text)
            return "".join(texts)
        raise _invalid("it must be a string or a list of text parts")


class CompletionParams(_Lenient):
    """What both generation routes accept."""

    model: str = Field(min_length=1, description="An installed model, or the active model.")
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: StrictInt | None = None
    stop: list[str] | None = Field(None, description="A string or a list of at most 4.")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="Accepted and ignored.")
    n: StrictInt | None = Field(None, description="Only 1.")
    logit_bias: dict[str, Any] | None = Field(None, description="Not supported.")
    logprobs: Any = Field(None, description="Not supported.")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, stop: Any) -> Any:
        if isinstance(stop, str):
            return [stop]
        if isinstance(stop, list) and len(stop) > 4:
            raise _invalid("at most 4 stop sequences are allowed")
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
            stop=tuple(self.stop or ()),
            max_tokens=max_tokens or self.max_tokens,
        )


class ChatCompletionRequest(CompletionParams):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    tools: list[Any] | None = Field(None, description="Not supported.")
    functions: list[Any] | None = Field(None, description="Not supported.")
    tool_choice: Any = Field(None, description="Not supported (except 'none').")
    function_call: Any = Field(None, description="Not supported (except 'none').")
    response_format: dict[str, Any] | None = Field(None, description="Only {'type': 'text'}.")

    @field_validator("messages")
    @classmethod
    def _a_turn(cls, messages: list[Message]) -> list[Message]:
        if all(m.role in SYSTEM_ROLES for m in messages):
            raise _invalid("there must be a user or assistant message")
        return messages

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list[Any] | None, info: ValidationInfo) -> None:
        if value:
            raise _unsupported(str(info.field_name), "(tool calling) is not supported")

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, value: Any, info: ValidationInfo) -> None:
        if value not in (None, "none", "auto"):
            raise _unsupported(str(info.field_name), "(tool calling) is not supported")

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type", "text") != "text":
            raise _unsupported("response_format", f"of type '{value.get('type')}' is not supported")
        return value

    def chat_messages(self) -> list[ChatMessage]:
        return [ChatMessage(m.role, m.content) for m in self.messages]

    def generation_options(self) -> GenerationOptions:
        return self.options(self.max_completion_tokens)


class CompletionRequest(CompletionParams):
    prompt: str = Field(description="A single string (lists and token arrays are not supported).")
    best_of: StrictInt | None = Field(None, description="Only 1.")
    echo: StrictBool | None = Field(None, description="Not supported.")
    suffix: str | None = Field(None, description="Not supported.")

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


# -- responses -------------------------------------------------------------------------------


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


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


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmserve"


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
