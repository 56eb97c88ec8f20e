"""Wire types of the native API (``*Request`` / ``*Response``), strict as SPEC §3 says."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from llmserve.domain import GenerationOptions, GenerationRequest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateOptions(_Strict):
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[StrictInt, Field(ge=0)] | None = None
    seed: StrictInt | None = None
    stop: str | Annotated[list[str], Field(max_length=8)] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None


class GenerateRequest(_Strict):
    prompt: str = Field(description="Required; not blank. Longer than MAX_PROMPT_CHARS → 413.")
    stream: StrictBool = Field(False, description="Server-Sent Events when true.")
    system: str | None = Field(None, description="Optional system prompt.")
    options: GenerateOptions | None = None

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value

    def to_domain(self) -> GenerationRequest:
        opts = self.options or GenerateOptions()
        stop: tuple[str, ...] = ()
        if isinstance(opts.stop, str):
            stop = (opts.stop,)
        elif opts.stop:
            stop = tuple(opts.stop)
        return GenerationRequest(
            prompt=self.prompt,
            system=self.system,
            options=GenerationOptions(
                temperature=opts.temperature,
                top_p=opts.top_p,
                top_k=opts.top_k,
                seed=opts.seed,
                stop=stop,
                max_tokens=opts.max_tokens,
            ),
        )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(BaseModel):
    response: str
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
