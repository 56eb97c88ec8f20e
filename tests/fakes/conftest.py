"""Fixtures for the double's own tests: one running double per module, reset for each test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.double_testing import BUILT_IN, OTHER
from tests.fakes.ollama_double import OllamaDouble


@pytest.fixture(scope="module")
def server() -> Iterator[OllamaDouble]:
    with OllamaDouble.running(models=[BUILT_IN, OTHER]) as double:
        yield double


@pytest.fixture
def double(server: OllamaDouble) -> Iterator[OllamaDouble]:
    """The module's double with fresh scripts, records and the two standard models."""
    server.reset()
    for name in server.models:
        server.remove_model(name)
    server.add_model(BUILT_IN)
    server.add_model(OTHER)
    yield server
    server.reset()


@pytest.fixture(scope="module")
def http(server: OllamaDouble) -> Iterator[httpx.Client]:
    """One client for the module (building a client loads a CA bundle: ~40 ms each time)."""
    with httpx.Client(base_url=server.base_url, timeout=5) as shared:
        yield shared


@pytest.fixture
def client(double: OllamaDouble, http: httpx.Client) -> httpx.Client:
    return http
