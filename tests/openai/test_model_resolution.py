"""``ModelService.resolve``: the active model or an installed one, with a short-lived cache."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from llmserve import errors
from llmserve.domain import ModelInfo
from llmserve.services.models import ModelService


class Backend:
    """Just enough of a backend: a slow ``list_models`` that counts its calls."""

    def __init__(self, *names: str) -> None:
        self.names = list(names)
        self.reads = 0

    async def list_models(self) -> list[ModelInfo]:
        self.reads += 1
        await asyncio.sleep(0.05)
        return [ModelInfo(name) for name in self.names]


def _service(backend: Backend, active: str = "llama3.2") -> ModelService:
    fake: Any = SimpleNamespace(current=active)
    return ModelService(backend, fake, sessions=None)  # type: ignore[arg-type]


def test_the_active_model_needs_no_look_up() -> None:
    backend = Backend("llama3.2:latest")
    service = _service(backend)
    assert asyncio.run(service.resolve("LLAMA3.2:latest")) == "llama3.2"
    assert backend.reads == 0


def test_concurrent_requests_share_one_read_and_the_next_ones_use_the_cache() -> None:
    backend = Backend("llama3.2:latest", "qwen2.5:0.5b")
    service = _service(backend)

    async def main() -> list[str]:
        first = await asyncio.gather(*(service.resolve("qwen2.5:0.5B") for _ in range(10)))
        return [*first, await service.resolve("qwen2.5:0.5b")]

    assert asyncio.run(main()) == ["qwen2.5:0.5b"] * 11
    assert backend.reads == 1


def test_a_miss_reads_again_once_then_is_not_found() -> None:
    backend = Backend("llama3.2:latest", "qwen2.5:0.5b")
    service = _service(backend)

    async def main() -> None:
        await service.resolve("qwen2.5:0.5b")
        backend.names.append("mistral:7b")  # pulled a moment ago
        assert await service.resolve("Mistral:7B") == "mistral:7b"
        assert backend.reads == 2
        with pytest.raises(errors.ModelNotFoundError, match="gpt-4o"):
            await service.resolve("gpt-4o")
        assert backend.reads == 3

    asyncio.run(main())


def test_a_caller_that_leaves_does_not_cancel_the_shared_read() -> None:
    backend = Backend("qwen2.5:0.5b")
    service = _service(backend)

    async def main() -> str:
        leaver = asyncio.create_task(service.resolve("qwen2.5:0.5b"))
        stayer = asyncio.create_task(service.resolve("qwen2.5:0.5b"))
        await asyncio.sleep(0.01)
        leaver.cancel()
        return await stayer

    assert asyncio.run(main()) == "qwen2.5:0.5b"
    assert backend.reads == 1
