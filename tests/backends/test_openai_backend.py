"""The openai backend against a real OpenAI-compatible server: llama-cpp-python's own server,
started as a subprocess on the real 270M model, with an API key.

What that server really does, and what these tests therefore pin down:

* it serves one model under its ``--model_alias`` and *ignores* the ``model`` of a request,
  answering with its only model whatever the name (it never says 404);
* it ignores ``stream_options.include_usage``: no usage chunk, so ``result.usage`` stays zero
  and the services count the streamed fragments instead;
* a wrong or missing API key gets ``401 {"detail": "Invalid API key"}``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from llmserve import errors
from llmserve.backends.base import Backend, GenerationStream
from llmserve.backends.embedded import EmbeddedBackend
from llmserve.backends.openai import OpenAIBackend, normalise_base_url
from llmserve.domain import GenerationOptions, GenerationRequest, Usage
from tests._cli_fork import run as forked
from tests._server import free_port

pytestmark = pytest.mark.embedded

API_KEY = "secret"
ALIAS = "gemma3-270m"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server_url(llama_cpp_server_url: str) -> str:
    """``python -m llama_cpp.server`` on the built-in GGUF: one for the whole session
    (``tests/conftest.py``), shared by every module that imports this fixture."""
    return llama_cpp_server_url


@contextlib.contextmanager
def llama_cpp_server(scratch: Path) -> Iterator[str]:
    """``python -m llama_cpp.server`` on the built-in GGUF (via ``_llama_server``, see there):
    its URL while it serves."""
    model = EmbeddedBackend().built_in_path
    port = free_port()
    log_path = scratch / "server.log"
    command = [
        sys.executable,
        "-m",
        "tests.backends._llama_server",
        *("--model", str(model), "--model_alias", ALIAS, "--chat_format", "gemma"),
        *("--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"),
        *("--api_key", API_KEY),
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(process, url, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_until_serving(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    headers = {"Authorization": f"Bearer {API_KEY}"}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"llama_cpp.server exited with {process.returncode}:\n{log_path.read_text()}"
            )
        try:
            if httpx.get(f"{url}/v1/models", headers=headers, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"llama_cpp.server did not answer within 60 s:\n{log_path.read_text()}")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=60.0), trust_env=False) as c:
        yield c


@pytest.fixture
async def backend(server_url: str, client: httpx.AsyncClient) -> OpenAIBackend:
    backend = OpenAIBackend(server_url, API_KEY, client)
    await backend.start()
    return backend


def request(prompt: str = "Why is the sky blue?", **options: object) -> GenerationRequest:
    return GenerationRequest.from_prompt(prompt, options=GenerationOptions(**options))  # type: ignore[arg-type]


async def collect(stream: GenerationStream) -> list[str]:
    return [piece async for piece in stream]


def test_base_url_forms() -> None:
    for given in (
        "http://gpu:8000",
        "http://gpu:8000/",
        "http://gpu:8000/v1",
        "http://gpu:8000/v1/",
    ):
        assert normalise_base_url(given) == "http://gpu:8000/v1"


@pytest.mark.anyio
async def test_start_learns_the_built_in_model(server_url: str, client: httpx.AsyncClient) -> None:
    backend = OpenAIBackend(f"{server_url}/v1", API_KEY, client)
    with pytest.raises(errors.BackendUnavailableError, match="not known yet"):
        backend.built_in_model  # noqa: B018
    await backend.start()
    checked: Backend = backend
    assert checked.built_in_model == ALIAS
    assert checked.name == "openai"
    given = OpenAIBackend(server_url, API_KEY, client, built_in_model="chosen")
    await given.start()
    assert given.built_in_model == "chosen"


@pytest.mark.anyio
async def test_list_models_and_version(backend: OpenAIBackend) -> None:
    (model,) = await backend.list_models()
    assert model.name == ALIAS
    assert model.details.get("owned_by") == "me"
    assert await backend.version() == "openai-compatible"


@pytest.mark.anyio
async def test_streams_real_text(backend: OpenAIBackend) -> None:
    req = GenerationRequest.from_prompt(
        "Why is the sky blue?",
        "Answer in one sentence.",
        GenerationOptions(max_tokens=16, temperature=0),
    )
    started = time.perf_counter()
    stream = await backend.open_generation(ALIAS, req)
    assert isinstance(stream, GenerationStream)
    first_token_after = time.perf_counter() - started
    pieces = await collect(stream)
    text = "".join(pieces)
    assert len(pieces) > 3 and len(text.strip()) > 5 and any(c.isalpha() for c in text)
    assert stream.result is not None
    assert stream.result.done_reason == "length"
    # This server sends no usage chunk (see the module doc): the fragments are the count.
    assert stream.result.usage == Usage()
    assert stream.tokens_received == len(pieces) <= 16
    assert first_token_after < 10


@pytest.mark.anyio
async def test_options_reach_the_server(backend: OpenAIBackend) -> None:
    async def text_of(**options: object) -> tuple[str, str]:
        stream = await backend.open_generation(ALIAS, request(**options))
        text = "".join(await collect(stream))
        assert stream.result is not None
        return text, stream.result.done_reason

    seeded = [await text_of(max_tokens=12, temperature=0.9, seed=5) for _ in range(2)]
    assert seeded[0] == seeded[1]
    short, reason = await text_of(max_tokens=3, temperature=0)
    assert reason == "length"
    free, _ = await text_of(max_tokens=20, temperature=0)
    stop = [word for word in free.split() if word.isalpha() and len(word) > 2][1]
    stopped, reason = await text_of(max_tokens=20, temperature=0, stop=(stop,))
    assert reason == "stop" and stop not in stopped and free.startswith(stopped)
    assert free.startswith(short)


@pytest.mark.anyio
async def test_aclose_mid_stream(backend: OpenAIBackend) -> None:
    stream = await backend.open_generation(ALIAS, request("Tell me a story.", max_tokens=500))
    async for _ in stream:
        break
    started = time.perf_counter()
    await stream.aclose()
    await stream.aclose()
    assert time.perf_counter() - started < 0.5


@pytest.mark.anyio
async def test_the_server_ignores_an_unknown_model_name(backend: OpenAIBackend) -> None:
    # llama-cpp-python's server answers with its only model whatever the name (documented
    # above); vLLM would answer 404 "The model ... does not exist", i.e. ModelNotFoundError.
    stream = await backend.open_generation("no-such-model", request(max_tokens=4))
    assert "".join(await collect(stream)).strip()


@pytest.mark.anyio
@pytest.mark.parametrize("key", ["wrong", None])
async def test_a_wrong_or_missing_api_key(
    server_url: str, client: httpx.AsyncClient, key: str | None
) -> None:
    backend = OpenAIBackend(server_url, key, client, built_in_model=ALIAS)
    with pytest.raises(errors.BackendError, match="OPENAI_API_KEY") as caught:
        await backend.open_generation(ALIAS, request(max_tokens=4))
    assert "Invalid API key" in caught.value.detail and "401" in caught.value.detail
    with pytest.raises(errors.BackendError, match="OPENAI_API_KEY"):
        await backend.list_models()


@pytest.mark.anyio
async def test_a_closed_port_is_backend_unavailable(client: httpx.AsyncClient) -> None:
    backend = OpenAIBackend(f"http://127.0.0.1:{free_port()}", API_KEY, client)
    with pytest.raises(errors.BackendUnavailableError, match="cannot connect"):
        await backend.start()
    with pytest.raises(errors.BackendUnavailableError):
        await backend.open_generation("any", request())
    with pytest.raises(errors.BackendUnavailableError):
        await backend.version()


@pytest.mark.anyio
async def test_no_first_token_in_time_is_a_timeout(
    server_url: str, client: httpx.AsyncClient
) -> None:
    backend = OpenAIBackend(
        server_url, API_KEY, client, built_in_model=ALIAS, first_token_timeout_s=0.001
    )
    with pytest.raises(errors.BackendTimeoutError, match=r"first token|did not answer"):
        await backend.open_generation(ALIAS, request(max_tokens=4))


@pytest.mark.anyio
async def test_pull_and_delete_are_not_supported(backend: OpenAIBackend) -> None:
    with pytest.raises(errors.NotSupportedError, match="not supported by the openai backend"):
        async for _ in backend.pull("llama3.2"):
            pass
    with pytest.raises(errors.NotSupportedError, match="not supported by the openai backend"):
        await backend.delete(ALIAS)
    await backend.warm(ALIAS)  # a no-op: the server keeps its model loaded
    await backend.aclose()  # closes nothing: the client is the caller's
    assert (await backend.list_models())[0].name == ALIAS


def test_llmserve_in_front_of_an_openai_compatible_engine(server_url: str, tmp_path: Path) -> None:
    """The whole server on LLM_BACKEND=openai: real text through /api/v1/generate, and a clear
    501 (API) / one red line (CLI) for what such an engine cannot do."""
    import os

    from tests._server import running_server

    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "LLM_BACKEND": "openai",
        "OPENAI_BASE_URL": server_url,
        "OPENAI_API_KEY": API_KEY,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'openai.db'}",
        "LOG_LEVEL": "WARNING",
    }
    with running_server(env, tmp_path, warm=True) as server:
        assert httpx.get(server.base_url + "/api/v1/models/active").json() == {"model": ALIAS}
        body = {"prompt": "Why is the sky blue?", "options": {"max_tokens": 12}}
        answer = httpx.post(server.base_url + "/api/v1/generate", json=body, timeout=60)
        assert answer.status_code == 200 and answer.json()["response"].strip()
        with httpx.stream(
            "POST", server.base_url + "/api/v1/generate", json={**body, "stream": True}, timeout=60
        ) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert len(lines) > 2 and lines[-1] == "data: {}"
        chat = httpx.post(
            server.base_url + "/v1/chat/completions",
            json={"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
            timeout=60,
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"].strip()
        pull = httpx.post(server.base_url + "/api/v1/models/pull", json={"name": "other"})
        assert pull.status_code == 501
        assert pull.json()["code"] == "not_supported"
        assert httpx.get(server.base_url + "/ready").status_code == 200
    result = forked(["models", "pull", "other"], env, tmp_path)  # tests/_cli_fork.py
    assert result.returncode == 5
    assert "not supported" in result.stderr and "Traceback" not in result.stderr
