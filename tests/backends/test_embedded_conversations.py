"""The embedded engine's conversations, structured output, forced tool calls, refusals and
embeddings, against the real 270M Gemma 3 GGUF in this process (no fakes).

One backend (one loaded model) serves the module; answers are greedy and short, so each
generation takes a second or two on a CPU.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from llmserve import errors
from llmserve.backends._embedded_engine import prefill, sample_tokens
from llmserve.backends._embedded_grammar import constrained_tokens
from llmserve.backends._embedded_plan import json_grammar, schema_grammar
from llmserve.backends._embedded_prompt import PromptBuilder, turns
from llmserve.backends.embedded import EmbeddedBackend, load_llama
from llmserve.domain import (
    GenerationOptions,
    GenerationRequest,
    GenerationResult,
    Message,
    ResponseFormat,
    StreamEvent,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)

pytestmark = pytest.mark.embedded

BUILT_IN = "gemma-3-270m-q4_k_m"
N_CTX = 2048


def greedy(max_tokens: int = 48, **options: Any) -> GenerationOptions:
    return GenerationOptions(max_tokens=max_tokens, temperature=0, **options)


WEATHER = Tool(
    "get_weather",
    "The current weather of a city",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
)
TIME = Tool(
    "get_time",
    "The current time in a time zone",
    {
        "type": "object",
        "properties": {"timezone": {"type": "string", "maxLength": 30}},
        "required": ["timezone"],
    },
)
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "colour": {"enum": ["red", "green", "blue"]},
        "pet": {"type": "boolean"},
    },
    "required": ["name", "age", "colour", "pet"],
    "additionalProperties": False,
}
# A conversation with every kind of turn: system, user, a tool call, its result, an answer.
CONVERSATION = (
    Message("system", "Be brief."),
    Message("user", "What is the weather in Paris?"),
    Message("assistant", tool_calls=(ToolCall("c1", "get_weather", {"city": "Paris"}),)),
    Message("tool", "18 C, sunny", tool_call_id="c1"),
    Message("assistant", "It is 18 C and sunny."),
    Message("user", "And tomorrow?"),
)
RENDERED = (
    "<bos><start_of_turn>user\nBe brief.\n\nWhat is the weather in Paris?<end_of_turn>\n"
    '<start_of_turn>model\n{"name":"get_weather","arguments":{"city":"Paris"}}<end_of_turn>\n'
    "<start_of_turn>user\nResult of get_weather: 18 C, sunny<end_of_turn>\n"
    "<start_of_turn>model\nIt is 18 C and sunny.<end_of_turn>\n"
    "<start_of_turn>user\nAnd tomorrow?<end_of_turn>\n"
    "<start_of_turn>model\n"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def backend(models_dir: Path) -> Iterator[EmbeddedBackend]:
    backend = EmbeddedBackend(models_dir=models_dir, n_ctx=N_CTX)
    yield backend
    asyncio.run(backend.aclose())


@pytest.fixture(scope="module")
def tokenizer(backend: EmbeddedBackend) -> Any:
    """The real model's vocabulary (a vocab-only load: no weights, no compute)."""
    import llama_cpp

    return llama_cpp.Llama(str(backend.built_in_path), vocab_only=True, verbose=False)


async def generate(
    backend: EmbeddedBackend, req: GenerationRequest, model: str = BUILT_IN
) -> tuple[list[StreamEvent], GenerationResult]:
    stream = await backend.open_generation(model, req)
    events = [event async for event in stream]
    assert stream.result is not None
    return events, stream.result


def text_of(events: list[StreamEvent]) -> str:
    return "".join(event for event in events if isinstance(event, str))


def rendered(tokenizer: Any, template: str | None, messages: tuple[Message, ...]) -> str:
    tokens = PromptBuilder(tokenizer, template).tokens(GenerationRequest(messages))
    return str(tokenizer.detokenize(tokens, special=True).decode())


# -- the conversation as a prompt ---------------------------------------------------------------


def test_every_turn_is_in_the_prompt_in_order(tokenizer: Any) -> None:
    """Without a template (the built-in GGUF has none): Gemma's turns, tool calls as JSON in
    the model's turn, the result as a user turn, the model's turn left open."""
    assert rendered(tokenizer, None, CONVERSATION) == RENDERED


GEMMA3 = (  # Gemma 3's own template, shortened: the system text opens the first user turn,
    # and roles must alternate
    "{{ bos_token }}{% if messages[0].role == 'system' %}"
    "{% set first = messages[0].content + '\n\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}"
    "{% for m in rest %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    "{% endif %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
    "{{ first if loop.first else '' }}{{ m.content | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
CHATML = (  # a template with a system role and no BOS
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_a_template_renders_the_same_conversation(tokenizer: Any) -> None:
    assert rendered(tokenizer, GEMMA3, CONVERSATION) == RENDERED
    chatml = rendered(tokenizer, CHATML, CONVERSATION)
    parts = [
        "<|im_start|>system\nBe brief.<|im_end|>",
        "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>",
        '<|im_start|>assistant\n{"name":"get_weather","arguments":{"city":"Paris"}}<|im_end|>',
        "<|im_start|>user\nResult of get_weather: 18 C, sunny<|im_end|>",
        "<|im_start|>assistant\nIt is 18 C and sunny.<|im_end|>",
        "<|im_start|>user\nAnd tomorrow?<|im_end|>",
    ]
    positions = [chatml.find(part) for part in parts]
    assert -1 not in positions and positions == sorted(positions), chatml
    assert chatml.endswith("<|im_start|>assistant\n")


def test_turns_of_one_role_are_merged_and_a_late_system_message_is_user_text() -> None:
    messages = (
        Message("system", "Be brief."),
        Message("system", "Be kind."),
        Message("user", "Weather?"),
        Message("assistant", "Checking.", tool_calls=(ToolCall("a", "get_weather", {}),)),
        Message("tool", "sunny", tool_call_id="a"),
        Message("tool", "warm", tool_name="get_temperature"),
        Message("tool", "?", tool_call_id="unknown"),
        Message("system", "Answer now."),
    )
    assert turns(messages) == [
        ("system", "Be brief.\n\nBe kind."),
        ("user", "Weather?"),
        ("assistant", 'Checking.\n\n{"name":"get_weather","arguments":{}}'),
        (
            "user",
            "Result of get_weather: sunny\n\nResult of get_temperature: warm\n\n"
            "Result of a tool: ?\n\nAnswer now.",
        ),
    ]


@pytest.mark.anyio
async def test_the_model_answers_a_conversation(backend: EmbeddedBackend, tokenizer: Any) -> None:
    """Two earlier question-and-answer pairs show the tiny model the answer's form (greedy)."""
    few_shot = (
        Message("user", "Is fire hot? Answer as JSON."),
        Message("assistant", '{"answer": "yes"}'),
        Message("user", "Is ice hot? Answer as JSON."),
        Message("assistant", '{"answer": "no"}'),
        Message("user", "Is the sky blue? Answer as JSON."),
    )
    events, result = await generate(backend, GenerationRequest(few_shot, options=greedy(8)))
    assert text_of(events).startswith('{"answer": "')
    expected = PromptBuilder(tokenizer, None).tokens(GenerationRequest(few_shot))
    assert result.usage.prompt_tokens == len(expected)


# -- structured output ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "options",
    [greedy(64), GenerationOptions(max_tokens=96, temperature=1.0, seed=7)],
    ids=["greedy", "sampled"],
)
async def test_a_json_schema_answer_validates_against_the_schema(
    backend: EmbeddedBackend, options: GenerationOptions
) -> None:
    req = GenerationRequest.from_prompt(
        "Describe a person.",
        options=options,
        response_format=ResponseFormat("json_schema", PERSON, name="person", strict=True),
    )
    events, result = await generate(backend, req)
    answer = json.loads(text_of(events))
    jsonschema.validate(answer, PERSON)
    assert result.done_reason == "stop" and not result.tool_calls


@pytest.mark.anyio
async def test_a_json_answer_is_an_object(backend: EmbeddedBackend) -> None:
    """Unconstrained, this model runs on past the object; the grammar ends the answer there."""
    few_shot = (
        Message("user", "Is fire hot? Answer as JSON."),
        Message("assistant", '{"answer": "yes"}'),
        Message("user", "Is the sky blue? Answer as JSON."),
    )
    req = GenerationRequest(few_shot, options=greedy(40), response_format=ResponseFormat("json"))
    events, result = await generate(backend, req)
    assert isinstance(json.loads(text_of(events)), dict)
    assert result.done_reason == "stop"


def test_grammars_exclude_raw_control_characters_from_strings() -> None:
    """JSON forbids them; llama-cpp-python's schema converter alone would allow them."""
    grammar = schema_grammar(BUILT_IN, {"type": "object", "properties": {"a": {"type": "string"}}})
    assert 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |' in grammar
    assert "\\x00-\\x1F" in json_grammar()


def test_sampling_under_a_grammar_picks_what_llama_generate_picks(
    backend: EmbeddedBackend,
) -> None:
    """Sample-then-check gives, greedily, exactly the tokens of ``Llama.generate(grammar=)``,
    which judges every candidate first (its speed is measured in ``_embedded_grammar``)."""
    from llama_cpp.llama_grammar import LlamaGrammar

    llama = load_llama(backend.built_in_path, n_ctx=512, n_threads=1)
    grammar = schema_grammar(BUILT_IN, PERSON)
    prompt = llama.tokenize(
        b"<start_of_turn>user\nDescribe a person.<end_of_turn>\n<start_of_turn>model\n",
        add_bos=True,
        special=True,
    )
    sampling = {"temp": 0.0, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "repeat_penalty": 1.1}
    answers = []
    for tokens in (
        lambda: llama.generate(prompt, grammar=LlamaGrammar.from_string(grammar), **sampling),
        lambda: constrained_tokens(llama, prompt, grammar, sampling),
    ):
        assert prefill(llama, prompt, threading.Event())
        generator = tokens()
        answers.append([token for token, _ in zip(generator, range(16), strict=False)])
        generator.close()
    llama.close()
    assert answers[0] == answers[1]
    assert len(answers[0]) == 16


class RecordingLlama:
    """Records what ``sample_tokens`` hands to ``Llama.generate``."""

    def __init__(self) -> None:
        self.sampling: dict[str, Any] = {}

    def set_seed(self, seed: int) -> None:
        self.seed = seed

    def generate(self, tokens: list[int], **sampling: Any) -> Iterator[int]:
        self.sampling = sampling
        return iter(())


def test_penalties_are_passed_with_ollamas_defaults() -> None:
    llama = RecordingLlama()
    sample_tokens(llama, [1], GenerationOptions())
    assert llama.sampling["repeat_penalty"] == 1.1
    assert llama.sampling["presence_penalty"] == llama.sampling["frequency_penalty"] == 0.0
    options = GenerationOptions(repeat_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25)
    sample_tokens(llama, [1], options)
    assert llama.sampling["repeat_penalty"] == 1.3
    assert llama.sampling["presence_penalty"] == 0.5
    assert llama.sampling["frequency_penalty"] == 0.25


# -- forced tool calls ----------------------------------------------------------------------


async def forced_call(
    backend: EmbeddedBackend, choice: ToolChoice, question: str
) -> tuple[ToolCallDelta, GenerationResult]:
    req = GenerationRequest(
        (Message("user", question),), options=greedy(64), tools=(WEATHER, TIME), tool_choice=choice
    )
    events, result = await generate(backend, req)
    assert len(events) == 1 and isinstance(events[0], ToolCallDelta), events
    return events[0], result


@pytest.mark.anyio
async def test_a_named_tool_call_is_forced(backend: EmbeddedBackend) -> None:
    choice = ToolChoice("function", "get_weather")
    delta, result = await forced_call(backend, choice, "What is the weather in Paris?")
    arguments = json.loads(delta.arguments)
    assert delta.index == 0 and delta.id and delta.name == "get_weather"
    assert result.tool_calls == [ToolCall(delta.id, "get_weather", arguments)]
    jsonschema.validate(arguments, WEATHER.parameters)
    assert result.done_reason == "tool_calls"
    assert result.usage.completion_tokens > 0


@pytest.mark.anyio
async def test_a_required_call_is_one_of_the_tools(backend: EmbeddedBackend) -> None:
    delta, result = await forced_call(backend, ToolChoice("required"), "What time is it in Tokyo?")
    [call] = result.tool_calls
    tool = {"get_weather": WEATHER, "get_time": TIME}[call.name]
    jsonschema.validate(call.arguments, tool.parameters)
    assert (delta.id, delta.name, json.loads(delta.arguments)) == (
        call.id,
        call.name,
        call.arguments,
    )
    assert result.done_reason == "tool_calls"


@pytest.mark.anyio
async def test_tool_choice_none_ignores_the_tools(backend: EmbeddedBackend) -> None:
    req = GenerationRequest(
        (Message("user", "Hello"),),
        options=greedy(4),
        tools=(WEATHER,),
        tool_choice=ToolChoice("none"),
    )
    events, result = await generate(backend, req)
    assert all(isinstance(event, str) for event in events) and not result.tool_calls
    assert result.done_reason in ("stop", "length")


# -- what the engine refuses before any work ------------------------------------------------

IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="  # noqa: E501 - a 1x1 PNG
REFUSED = {
    "images": GenerationRequest((Message("user", "What is this?", images=(IMAGE,)),)),
    "tool_choice 'auto'": GenerationRequest((Message("user", "Weather?"),), tools=(WEATHER,)),
    "keep_alive": GenerationRequest.from_prompt("Hi", options=GenerationOptions(keep_alive="5m")),
    "num_ctx 4096": GenerationRequest.from_prompt("Hi", options=GenerationOptions(num_ctx=4096)),
    "this JSON schema": GenerationRequest.from_prompt(
        "Hi", response_format=ResponseFormat("json_schema", {"$ref": "https://example.com/s"})
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("capability", list(REFUSED))
async def test_what_the_engine_cannot_do_is_refused_before_any_work(
    capability: str, tmp_path: Path
) -> None:
    """Refused before the job is submitted: the model here is a broken file that any load
    would fail on, and nothing was loaded."""
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    backend = EmbeddedBackend(models_dir=tmp_path, n_ctx=N_CTX)
    try:
        with pytest.raises(errors.UnsupportedError, match=f"model 'broken' .*{capability}") as info:
            await backend.open_generation("broken", REFUSED[capability])
        assert info.value.code == "unsupported"
        assert backend.loaded_model is None
    finally:
        await backend.aclose()


@pytest.mark.anyio
async def test_num_ctx_within_the_context_is_the_window(backend: EmbeddedBackend) -> None:
    long = GenerationRequest.from_prompt("blue sky " * 20, options=GenerationOptions(num_ctx=16))
    with pytest.raises(errors.PromptTooLargeError, match="context holds 16"):
        await backend.open_generation(BUILT_IN, long)
    short = GenerationRequest.from_prompt("Hi", options=greedy(100, num_ctx=14))
    _, result = await generate(backend, short)
    assert result.usage.prompt_tokens + result.usage.completion_tokens <= 14


# -- embeddings -----------------------------------------------------------------------------

TEXTS = ["Why is the sky blue?", "Bananas are yellow.", "Why is the sky blue?"]


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.mark.anyio
async def test_embeddings_are_unit_vectors_one_per_input(
    backend: EmbeddedBackend, tokenizer: Any
) -> None:
    found = await backend.embed(BUILT_IN, TEXTS)
    assert [len(vector) for vector in found.vectors] == [640, 640, 640]
    assert all(abs(norm(vector) - 1) < 1e-6 for vector in found.vectors)
    counted = sum(len(tokenizer.tokenize(text.encode(), add_bos=True)) for text in TEXTS)
    assert found.prompt_tokens == counted
    same, other = found.vectors[0], found.vectors[1]
    assert found.vectors[2] == same  # the same text, the same vector
    assert cosine(same, other) < 0.95  # different texts, different vectors
    alone = await backend.embed(BUILT_IN, [TEXTS[0]])  # whatever else the request holds
    assert alone.vectors == [same]


@pytest.mark.anyio
async def test_dimensions_cut_the_vector_and_renormalise(backend: EmbeddedBackend) -> None:
    [full] = (await backend.embed(BUILT_IN, TEXTS[:1])).vectors
    [short] = (await backend.embed(BUILT_IN, TEXTS[:1], dimensions=64)).vectors
    assert len(short) == 64 and abs(norm(short) - 1) < 1e-6
    scale = norm(full[:64])
    assert all(abs(a - b / scale) < 1e-6 for a, b in zip(short, full[:64], strict=True))
    with pytest.raises(errors.UnsupportedError, match=r"641 dimensions .* have 640"):
        await backend.embed(BUILT_IN, TEXTS[:1], dimensions=641)


@pytest.mark.anyio
async def test_no_input_no_vectors_and_an_unknown_model(backend: EmbeddedBackend) -> None:
    found = await backend.embed(BUILT_IN, [])
    assert found.vectors == [] and found.prompt_tokens == 0
    with pytest.raises(errors.ModelNotFoundError):
        await backend.embed("llama3.2", ["hello"])


@pytest.mark.anyio
async def test_the_embedding_instance_lives_and_goes_with_its_model(
    backend: EmbeddedBackend, models_dir: Path
) -> None:
    shutil.copy(backend.built_in_path, models_dir / "Copy.gguf")
    await backend.embed("copy", ["hello"])
    assert backend.loaded_model == "Copy"
    _, result = await generate(
        backend, GenerationRequest.from_prompt("Hi", options=greedy(2)), "copy"
    )
    assert result.usage.completion_tokens == 2  # generation beside it, same file
    await backend.delete("copy")  # unloads both instances first
    assert backend.loaded_model is None
    assert [len(v) for v in (await backend.embed(BUILT_IN, ["hello"])).vectors] == [640]


@pytest.mark.anyio
async def test_a_cancelled_embedding_stops_between_inputs(backend: EmbeddedBackend) -> None:
    await backend.embed(BUILT_IN, ["warm"])
    many = ["The sea is wide and deep. " * 4] * 80  # about 50 s in all
    task = asyncio.create_task(backend.embed(BUILT_IN, many))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    started = time.perf_counter()
    _, result = await generate(backend, GenerationRequest.from_prompt("Hi", options=greedy(2)))
    assert result.usage.completion_tokens == 2
    assert time.perf_counter() - started < 10.0  # one input's time at most, not eighty
