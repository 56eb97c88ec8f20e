"""The official ``ollama`` Python client, sync and async, against a running ``llmserve serve``.

One server for the whole module, with ``AUTH_REQUIRED=true``: every client below talks to it as a
user of a secured Ollama would, with ``headers={"Authorization": "Bearer <key>"}`` (admin actions
with an admin key). Each test checks two things: what the client got back, and what reached the
Ollama double — the upstream request must be the client's own (``options`` with ``num_ctx``,
``keep_alive``, ``think``, ``format``, ``tools``, images and tool results untouched).

``deployment`` (a module's server, its keys, an emptied database), ``install_models`` and
``assert_same_messages`` are also used by ``test_ollama_client_replays.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import ollama
import pytest
from sqlalchemy import text

from llmserve.db.base import Base
from llmserve.db.session import make_engine
from tests._cli_fork import run as forked
from tests._server import ServerProcess, running_server
from tests.conftest import BUILT_IN
from tests.fakes.ollama_double import GenerationRecord, OllamaDouble, Script

LLMSERVE = (sys.executable, "-m", "llmserve")

#: Models the double has besides conftest's two (``llama3.2`` is the built-in one).
VISION = "llava:7b"
THINKER = "qwen3:0.6b"
EMBEDDER = "all-minilm:latest"
EMBEDDING_DIM = 8

#: A 1x1 PNG: what a client reads from disk and sends as base64.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city's name."},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "temperature": {"type": "integer", "minimum": -90, "maximum": 60},
        "sunny": {"type": "boolean"},
    },
    "required": ["city", "temperature", "sunny"],
}


# -- a running llmserve, its keys and its database ------------------------------------------------


@dataclass
class Deployment:
    """One ``llmserve serve`` process for a module, and the keys made for it."""

    server: ServerProcess
    auth_required: bool
    user_key: str | None = None
    admin_key: str | None = None

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def headers(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}


def install_models(double: OllamaDouble) -> None:
    """The models these tests name, on top of the two every double has."""
    double.add_model(VISION, capabilities=("completion", "vision"))
    double.add_model(THINKER, capabilities=("completion", "tools", "thinking"))
    double.add_model(EMBEDDER, capabilities=("embedding",), embedding_dim=EMBEDDING_DIM)


def _server_env(database_url: str, double: OllamaDouble, auth_required: bool) -> dict[str, str]:
    """What conftest's ``subprocess_env`` gives a server, for a module-long one."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return {
        **keep,
        "DATABASE_URL": database_url,
        "LLM_BACKEND": "ollama",
        "OLLAMA_BASE_URL": double.base_url,
        "BUILT_IN_OLLAMA_MODEL": BUILT_IN,
        "AUTH_REQUIRED": "true" if auth_required else "false",
        "SSE_PING_INTERVAL_S": "15",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def _empty_tables(database_url: str) -> None:
    """What conftest's ``db_url`` does after each test: the next module starts from nothing."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            names = ", ".join(table.name for table in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
    finally:
        engine.dispose()


def _create_key(env: dict[str, str], cwd: Path, name: str, *, admin: bool) -> str:
    """``llmserve keys create``, forked from a warm interpreter (``tests/_cli_fork.py``)."""
    created = forked(["keys", "create", name, *(["--admin"] if admin else [])], env, cwd)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


@contextlib.contextmanager
def deployment(
    database_url: str, double: OllamaDouble, cwd: Path, *, auth_required: bool
) -> Iterator[Deployment]:
    """A server on the session's database and double; with auth, a user and an admin key made
    with ``llmserve keys create`` as an operator would. The tables are emptied before and after."""
    double.reset()
    install_models(double)
    env = _server_env(database_url, double, auth_required)
    _empty_tables(database_url)
    try:
        user_key = admin_key = None
        if auth_required:
            user_key = _create_key(env, cwd, "ollama-client", admin=False)
            admin_key = _create_key(env, cwd, "ollama-admin", admin=True)
        with running_server(env, cwd, warm=True) as server:
            yield Deployment(server, auth_required, user_key, admin_key)
    finally:
        _empty_tables(database_url)


@dataclass
class Wire:
    """The requests a client put on the wire (an httpx ``request`` event hook), bodies decoded."""

    sent: list[tuple[str, str, Any]] = field(default_factory=list)

    def record(self, request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else None
        self.sent.append((request.method, request.url.path, body))

    async def arecord(self, request: httpx.Request) -> None:
        self.record(request)

    def last(self, path: str) -> Any:
        """The body of the last request to ``path``."""
        return next(body for _, sent_path, body in reversed(self.sent) if sent_path == path)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llmserve(
    database_url: str, ollama_server: OllamaDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """One server for the module, keys required."""
    cwd = tmp_path_factory.mktemp("ollama-clients")
    with deployment(database_url, ollama_server, cwd, auth_required=True) as running:
        yield running


@pytest.fixture
def double(ollama: OllamaDouble) -> OllamaDouble:
    """conftest's double (fresh scripts and records), with this module's models."""
    install_models(ollama)
    return ollama


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client sends ``$OLLAMA_API_KEY`` when no header is given; this run's shell decides
    nothing here."""
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)


def client(
    llmserve: Deployment,
    wire: Wire | None = None,
    *,
    admin: bool = False,
    answers: list[Any] | None = None,
) -> ollama.Client:
    """A client as its users write it: the host and the key header, nothing else (no proxies
    from the environment). ``wire`` records what it sends; ``answers`` gets each JSON answer as
    it came over the wire (for the fields the client's own types drop)."""
    key = llmserve.admin_key if admin else llmserve.user_key
    hooks: dict[str, list[Any]] = {"request": [wire.record]} if wire else {}
    if answers is not None:

        def keep(response: httpx.Response) -> None:
            response.read()
            answers.append(response.json())

        hooks["response"] = [keep]
    return ollama.Client(
        host=llmserve.base_url,
        headers=llmserve.headers(key),
        timeout=30,
        trust_env=False,
        event_hooks=hooks,
    )


def async_client(
    llmserve: Deployment, wire: Wire | None = None, *, admin: bool = False
) -> ollama.AsyncClient:
    key = llmserve.admin_key if admin else llmserve.user_key
    hooks = {"request": [wire.arecord]} if wire else {}
    return ollama.AsyncClient(
        host=llmserve.base_url,
        headers=llmserve.headers(key),
        timeout=30,
        trust_env=False,
        event_hooks=hooks,
    )


def upstream(double: OllamaDouble, path: str) -> GenerationRecord:
    """The last generation the double answered on ``path``."""
    return next(record for record in reversed(double.generations) if record.path == path)


def assert_forwarded(record: GenerationRecord, sent: dict[str, Any], *fields: str) -> None:
    """Each of ``fields`` reached Ollama exactly as the client sent it."""
    for name in fields:
        assert record.body.get(name) == sent[name], f"{name} was changed on the way to Ollama"


def _meaning(message: dict[str, Any]) -> dict[str, Any]:
    """What Ollama reads from a chat message: an absent ``content`` is ``""``, and a call's
    ``id`` only labels it (Ollama's own templates use the function and ``tool_name``)."""
    calls = [{"function": call["function"]} for call in message.get("tool_calls") or []]
    kept = {k: v for k, v in message.items() if k not in ("content", "tool_calls") and v}
    return {**kept, "content": message.get("content") or "", "tool_calls": calls}


def assert_same_messages(received: list[dict[str, Any]], sent: list[dict[str, Any]]) -> None:
    """The messages reached Ollama as the client sent them (roles, text, images, tool calls
    with their arguments as objects, ``tool_name``), ids aside."""
    assert [_meaning(m) for m in received] == [_meaning(m) for m in sent]


def assert_final_counters(final: Any) -> None:
    assert final.done is True
    assert final.done_reason == "stop"
    assert final.prompt_eval_count == 7 and final.eval_count
    assert final.total_duration and final.eval_duration


# -- generate and chat ----------------------------------------------------------------------------


def test_generate_streams_and_answers_whole_with_options_untouched(
    llmserve: Deployment, double: OllamaDouble, wire: Wire
) -> None:
    options = {"num_ctx": 8192, "temperature": 0.2, "seed": 42, "num_predict": 64, "top_k": 20}
    with client(llmserve, wire) as c:
        chunks = list(
            c.generate(
                model=BUILT_IN,
                prompt="Say hello",
                system="Be brief.",
                options=options,
                keep_alive="10m",
                stream=True,
            )
        )
        sent = wire.last("/api/generate")
        record = upstream(double, "/api/generate")
        assert "".join(chunk.response for chunk in chunks) == "Hello, world!"
        assert all(chunk.model == BUILT_IN for chunk in chunks)
        assert [chunk.done for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
        assert_final_counters(chunks[-1])
        assert record.body["options"] == options and record.body["keep_alive"] == "10m"
        assert_forwarded(record, sent, "prompt", "system", "options", "keep_alive")

        whole = c.generate(model=BUILT_IN, prompt="Again", options={"num_ctx": 4096})
        assert whole.response == "Hello, world!" and whole.model == BUILT_IN
        assert_final_counters(whole)
        record = upstream(double, "/api/generate")
        assert record.body["options"] == {"num_ctx": 4096}


def test_chat_streams_thinking_then_text_and_answers_whole(
    llmserve: Deployment, double: OllamaDouble, wire: Wire
) -> None:
    double.enqueue(
        Script(thinking=["Let me ", "think."], tokens=["Hi", " there"]),
        Script(thinking=["Hmm."], tokens=["Fine."]),
    )
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello?"},
    ]
    options = {"num_ctx": 16384, "temperature": 0.0}
    with client(llmserve, wire) as c:
        parts = list(
            c.chat(
                model=THINKER,
                messages=messages,
                think=True,
                options=options,
                keep_alive=-1,
                stream=True,
            )
        )
        assert "".join(p.message.thinking or "" for p in parts) == "Let me think."
        assert "".join(p.message.content or "" for p in parts) == "Hi there"
        assert {p.message.role for p in parts} == {"assistant"}
        assert_final_counters(parts[-1])
        record = upstream(double, "/api/chat")
        sent = wire.last("/api/chat")
        assert record.body["think"] is True and record.body["keep_alive"] == -1
        assert record.body["options"] == options
        assert_forwarded(record, sent, "messages", "options", "keep_alive", "think")

        whole = c.chat(model=THINKER, messages=messages, think=True)
        assert (whole.message.thinking, whole.message.content) == ("Hmm.", "Fine.")
        assert whole.model == THINKER and whole.done and whole.done_reason == "stop"


def test_an_uninstalled_model_is_ollamas_404(llmserve: Deployment, double: OllamaDouble) -> None:
    with client(llmserve) as c:
        with pytest.raises(ollama.ResponseError) as raised:
            c.chat(model="nope:1b", messages=[{"role": "user", "content": "x"}])
        assert (raised.value.status_code, raised.value.error) == (404, "model 'nope:1b' not found")
        with pytest.raises(ollama.ResponseError) as raised:
            list(c.generate(model="nope:1b", prompt="x", stream=True))
        assert raised.value.status_code == 404
    assert not double.generations


@pytest.mark.anyio
async def test_async_client_generates_and_chats_streaming_and_not(
    llmserve: Deployment, double: OllamaDouble, wire: Wire
) -> None:
    async with async_client(llmserve, wire) as c:
        stream = await c.generate(model=BUILT_IN, prompt="hi", stream=True, keep_alive=30)
        chunks = [chunk async for chunk in stream]
        assert "".join(chunk.response for chunk in chunks) == "Hello, world!"
        assert_final_counters(chunks[-1])
        assert upstream(double, "/api/generate").body["keep_alive"] == 30

        whole = await c.generate(model=BUILT_IN, prompt="hi")
        assert whole.response == "Hello, world!" and whole.done

        messages = [{"role": "user", "content": "hi"}]
        stream = await c.chat(
            model=BUILT_IN, messages=messages, stream=True, options={"num_ctx": 2048}
        )
        parts = [part async for part in stream]
        assert "".join(p.message.content for p in parts) == "Hello, world!"
        assert_final_counters(parts[-1])
        record = upstream(double, "/api/chat")
        assert record.body["options"] == {"num_ctx": 2048}
        assert_forwarded(record, wire.last("/api/chat"), "messages", "options")

        whole_chat = await c.chat(model=BUILT_IN, messages=messages)
        assert whole_chat.message.content == "Hello, world!"
        assert whole_chat.message.role == "assistant"


# -- tools, images, format ------------------------------------------------------------------------


def test_tool_round_trip_with_the_sync_client(
    llmserve: Deployment, double: OllamaDouble, wire: Wire
) -> None:
    arguments = {"city": "Paris", "unit": "celsius"}
    double.enqueue(
        Script(tool_calls=[{"name": "get_weather", "arguments": arguments}]),
        Script(tokens=["It is ", "18 °C."]),
    )
    answers: list[Any] = []
    question = {"role": "user", "content": "Weather in Paris?"}
    with client(llmserve, wire, answers=answers) as c:
        first = c.chat(model=BUILT_IN, messages=[question], tools=[WEATHER_TOOL])
        (call,) = first.message.tool_calls or []
        assert call.function.name == "get_weather"
        assert call.function.arguments == arguments  # an object, never a JSON string
        assert first.done_reason in ("stop", "tool_calls")
        sent_tools = wire.last("/api/chat")["tools"]
        asked = upstream(double, "/api/chat")
        assert asked.body["tools"] == sent_tools  # the client's own tool list, untouched
        (went_out,) = asked.tool_calls_sent
        (on_the_wire,) = answers[-1]["message"]["tool_calls"]
        assert on_the_wire["id"] == went_out["id"], "Ollama's call id must reach the client"
        assert on_the_wire["function"]["arguments"] == arguments

        result = {"role": "tool", "content": '{"temperature": 18}', "tool_name": "get_weather"}
        second = c.chat(
            model=BUILT_IN, messages=[question, first.message, result], tools=[WEATHER_TOOL]
        )
    assert second.message.content == "It is 18 °C."
    record = upstream(double, "/api/chat")
    assert record.messages is not None
    assistant, tool = record.messages[1], record.messages[2]
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": arguments}
    assert tool == {"role": "tool", "content": '{"temperature": 18}', "tool_name": "get_weather"}
    assert_same_messages(record.body["messages"], wire.last("/api/chat")["messages"])
    assert_forwarded(record, wire.last("/api/chat"), "tools")


@pytest.mark.anyio
async def test_tool_round_trip_streaming_with_the_async_client(
    llmserve: Deployment, double: OllamaDouble, wire: Wire
) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Oslo"}},
        {"name": "get_weather", "arguments": {"city": "Lima", "unit": "fahrenheit"}},
    ]
    double.enqueue(Script(tool_calls=calls, tool_chunks="each"), Script(tokens=["Cold; warm."]))
    question = {"role": "user", "content": "Oslo and Lima?"}
    async with async_client(llmserve, wire) as c:
        stream = await c.chat(model=THINKER, messages=[question], tools=[WEATHER_TOOL], stream=True)
        parts = [part async for part in stream]
        received = [call for part in parts for call in part.message.tool_calls or []]
        assert [(r.function.name, dict(r.function.arguments)) for r in received] == [
            (call["name"], call["arguments"]) for call in calls
        ]
        assert parts[-1].done
        assistant = {"role": "assistant", "content": "", "tool_calls": received}
        results = [
            {"role": "tool", "content": "-3", "tool_name": "get_weather"},
            {"role": "tool", "content": "81", "tool_name": "get_weather"},
        ]
        answer = await c.chat(model=THINKER, messages=[question, assistant, *results])
    assert answer.message.content == "Cold; warm."
    record = upstream(double, "/api/chat")
    assert record.messages is not None
    back = record.messages[1]["tool_calls"]
    assert [call["function"] for call in back] == [
        {"name": c["name"], "arguments": c["arguments"]} for c in calls
    ]
    assert [m.get("tool_name") for m in record.messages[2:]] == ["get_weather"] * 2
    assert [m["content"] for m in record.messages[2:]] == ["-3", "81"]


def test_an_image_reaches_a_vision_model_as_base64(
    llmserve: Deployment, double: OllamaDouble, wire: Wire
) -> None:
    encoded = base64.b64encode(PNG).decode()
    with client(llmserve, wire) as c:
        answer = c.chat(
            model=VISION,
            messages=[{"role": "user", "content": "What is this?", "images": [PNG]}],
        )
        assert answer.message.content == "Hello, world!"
        assert wire.last("/api/chat")["messages"][0]["images"] == [encoded]
        assert upstream(double, "/api/chat").images == [encoded]

        generated = c.generate(model=VISION, prompt="Describe it", images=[PNG])
        assert generated.response == "Hello, world!"
        assert upstream(double, "/api/generate").images == [encoded]


@pytest.mark.anyio
async def test_format_with_a_json_schema_reaches_ollama_untouched(
    llmserve: Deployment, double: OllamaDouble, wire: Wire
) -> None:
    with client(llmserve, wire) as c:
        answer = c.chat(
            model=BUILT_IN,
            messages=[{"role": "user", "content": "Weather in Rome as JSON"}],
            format=ANSWER_SCHEMA,
        )
    jsonschema.validate(json.loads(answer.message.content), ANSWER_SCHEMA)
    assert upstream(double, "/api/chat").format == ANSWER_SCHEMA
    assert upstream(double, "/api/chat").body["format"] == wire.last("/api/chat")["format"]

    async with async_client(llmserve) as ac:
        stream = await ac.generate(model=BUILT_IN, prompt="JSON", format="json", stream=True)
        text_ = "".join([chunk.response async for chunk in stream])
    assert isinstance(json.loads(text_), dict)
    assert upstream(double, "/api/generate").format == "json"


# -- embeddings and the model list ----------------------------------------------------------------


@pytest.mark.anyio
async def test_embed_and_the_legacy_embeddings(llmserve: Deployment, double: OllamaDouble) -> None:
    with client(llmserve) as c:
        answer = c.embed(model=EMBEDDER, input=["first text", "second text"], truncate=True)
        assert answer.model == EMBEDDER
        assert [len(vector) for vector in answer.embeddings] == [EMBEDDING_DIM] * 2
        record = double.embeddings[-1]
        assert (record.path, record.inputs) == ("/api/embed", ["first text", "second text"])
        assert [list(v) for v in answer.embeddings] == record.embeddings
        assert record.truncate is True

        legacy = c.embeddings(model=EMBEDDER, prompt="one text")
        assert len(legacy.embedding) == EMBEDDING_DIM
        assert double.embeddings[-1].inputs == ["one text"]
        assert list(legacy.embedding) == double.embeddings[-1].embeddings[0]

    async with async_client(llmserve) as ac:
        single = await ac.embed(model=EMBEDDER, input="alone", keep_alive="1m")
    assert len(single.embeddings) == 1 and len(single.embeddings[0]) == EMBEDDING_DIM
    assert double.embeddings[-1].request.get("keep_alive") == "1m"


def test_embed_answers_carry_ollamas_durations(llmserve: Deployment, double: OllamaDouble) -> None:
    with client(llmserve) as c:
        answer = c.embed(model=EMBEDDER, input="text")
    assert answer.prompt_eval_count and answer.total_duration and answer.load_duration


@pytest.mark.anyio
async def test_list_show_and_ps_describe_the_backends_models(
    llmserve: Deployment, double: OllamaDouble
) -> None:
    with client(llmserve) as c:
        listed = c.list()
        names = [model.model for model in listed.models]
        assert set(double.models) <= set(names)
        llama = next(m for m in listed.models if m.model == "llama3.2:latest")
        assert llama.size and llama.digest and llama.modified_at
        assert llama.details is not None and llama.details.family == "llama"

        shown = c.show(BUILT_IN)
        assert shown.capabilities is not None and "completion" in shown.capabilities
        assert shown.template and shown.parameters and shown.modelinfo
        assert shown.details is not None and shown.details.family == "llama"
        assert "vision" in (c.show(VISION).capabilities or [])

        c.generate(model=BUILT_IN, prompt="warm up", keep_alive="5m")
        loaded = {model.model: model for model in c.ps().models}
        assert "llama3.2:latest" in loaded
        assert loaded["llama3.2:latest"].expires_at is not None
        assert loaded["llama3.2:latest"].size_vram

    async with async_client(llmserve) as ac:
        assert {m.model for m in (await ac.list()).models} == set(names)
        assert "tools" in ((await ac.show("qwen2.5:0.5b")).capabilities or [])
        assert "llama3.2:latest" in {m.model for m in (await ac.ps()).models}


# -- admin actions --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pull_streams_progress_that_ends_in_success(
    llmserve: Deployment, double: OllamaDouble
) -> None:
    double.add_registry_model("smollm:135m")
    double.add_registry_model("tinyllama:1.1b")
    with client(llmserve, admin=True) as c:
        progress = list(c.pull("smollm:135m", stream=True))
    statuses = [step.status for step in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    layers = [step for step in progress if (step.status or "").startswith("pulling ")][1:]
    assert layers and all(step.digest and step.total for step in layers)
    assert any(step.completed == step.total for step in layers)
    assert "smollm:135m" in double.models
    assert double.pulls[-1].model == "smollm:135m" and double.pulls[-1].finished

    async with async_client(llmserve, admin=True) as ac:
        done = await ac.pull("tinyllama:1.1b")
        assert done.status == "success"
        stream = await ac.pull("smollm:135m", stream=True)
        assert [step.status async for step in stream][-1] == "success"
        assert "tinyllama:1.1b" in {m.model for m in (await ac.list()).models}


def test_pull_and_delete_need_an_admin_key(llmserve: Deployment, double: OllamaDouble) -> None:
    double.add_registry_model("smollm:135m")
    with client(llmserve) as c:
        with pytest.raises(ollama.ResponseError) as raised:
            list(c.pull("smollm:135m", stream=True))
        assert raised.value.status_code == 403 and raised.value.error
        with pytest.raises(ollama.ResponseError) as raised:
            c.delete("qwen2.5:0.5b")
        assert raised.value.status_code == 403
    assert not double.pulls and "qwen2.5:0.5b" in double.models


def test_delete_of_the_built_in_model_is_refused_with_ollamas_error(
    llmserve: Deployment, double: OllamaDouble
) -> None:
    with client(llmserve, admin=True) as c:
        with pytest.raises(ollama.ResponseError) as raised:
            c.delete(BUILT_IN)
        assert raised.value.status_code == 403
        assert isinstance(raised.value.error, str) and not raised.value.error.startswith("{")
        assert "built-in" in raised.value.error.lower() or "built in" in raised.value.error
        assert "llama3.2:latest" in double.models
        assert not [r for r in double.requests if r.path == "/api/delete"]

        assert c.delete("qwen2.5:0.5b").status == "success"
    assert "qwen2.5:0.5b" not in double.models


@pytest.mark.anyio
async def test_copy_and_create_with_an_admin_key(
    llmserve: Deployment, double: OllamaDouble, wire: Wire
) -> None:
    with client(llmserve, wire, admin=True) as c:
        assert c.copy("qwen2.5:0.5b", "my-qwen:v1").status == "success"
        assert "my-qwen:v1" in double.models
        progress = list(
            c.create(model="terse-llama", from_=BUILT_IN, system="Be terse.", stream=True)
        )
        assert progress and progress[-1].status == "success"
        created = double.creates[-1]
        assert created.model == "terse-llama" and created.finished
        assert created.request == wire.last("/api/create")  # the body went on as it came
        assert "terse-llama:latest" in {m.model for m in c.list().models}
    async with async_client(llmserve) as ac:
        with pytest.raises(ollama.ResponseError) as raised:
            await ac.copy("qwen2.5:0.5b", "theirs:v1")
        assert raised.value.status_code == 403
        with pytest.raises(ollama.ResponseError) as raised:
            await ac.create(model="theirs", from_=BUILT_IN)
        assert raised.value.status_code == 403
    assert "theirs:v1" not in double.models and "theirs:latest" not in double.models


# -- keys -----------------------------------------------------------------------------------------


def test_without_a_key_the_client_gets_ollamas_401(
    llmserve: Deployment, double: OllamaDouble
) -> None:
    anonymous = ollama.Client(host=llmserve.base_url, timeout=30, trust_env=False)
    with anonymous:
        for call in (
            anonymous.list,
            anonymous.ps,
            lambda: anonymous.show(BUILT_IN),
            lambda: anonymous.chat(model=BUILT_IN, messages=[{"role": "user", "content": "x"}]),
            lambda: list(anonymous.generate(model=BUILT_IN, prompt="x", stream=True)),
            lambda: anonymous.embed(model=EMBEDDER, input="x"),
        ):
            with pytest.raises(ollama.ResponseError) as raised:
                call()
            assert raised.value.status_code == 401
            assert isinstance(raised.value.error, str) and raised.value.error
            assert not raised.value.error.startswith("{"), "the body must be {'error': '...'}"
    assert not double.generations and not double.embeddings

    wrong = ollama.Client(
        host=llmserve.base_url, headers={"Authorization": "Bearer llms_wrong"}, trust_env=False
    )
    with wrong, pytest.raises(ollama.ResponseError) as raised:
        wrong.list()
    assert raised.value.status_code == 401

    # The probes stay open: clients call them before they send a key.
    assert httpx.get(llmserve.base_url + "/", trust_env=False).text == "Ollama is running"
    version = httpx.get(llmserve.base_url + "/api/version", trust_env=False)
    assert version.status_code == 200 and isinstance(version.json()["version"], str)
    body = httpx.get(llmserve.base_url + "/api/tags", trust_env=False)
    assert body.status_code == 401 and list(body.json()) == ["error"]


def test_the_x_api_key_header_works_too(llmserve: Deployment, double: OllamaDouble) -> None:
    assert llmserve.user_key is not None
    c = ollama.Client(
        host=llmserve.base_url, headers={"X-API-Key": llmserve.user_key}, trust_env=False
    )
    with c:
        assert c.chat(model=BUILT_IN, messages=[{"role": "user", "content": "x"}]).done
        assert c.list().models
