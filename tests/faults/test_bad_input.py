"""Bad input never gives a 500 or kills the server, over a real ``llmserve serve``.

A schemathesis run against ``/openapi.json`` (fixed seed, bounded examples, valid and invalid
data for every operation), then the explicit cases. Decisions made here:

* ``Content-Type: text/plain`` with a JSON body: 422. FastAPI parses a body as JSON only when
  the content type says JSON (or is missing), so the body is a string, which is not an object.
* invalid UTF-8 and unparseable JSON (100 000 nested ``[``): 400 ``invalid_request`` (FastAPI
  refuses them before validation, unlike a JSON syntax error, which is its 422 ``json_invalid``).
* headers over 32 KB in total: 431 (``api/limits.py``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from tests._server import ServerProcess, running_server
from tests.fakes.ollama_double import OllamaDouble
from tests.faults._tools import GENERATE, raw_request, server_env, status_of, vm_rss_kb

EXAMPLES_PER_OPERATION = 30
TEN_MB = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def module_server(
    database_url: str, ollama_server: OllamaDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = server_env(database_url, ollama_server.base_url)
    with running_server(env, tmp_path_factory.mktemp("bad-input"), warm=True) as server:
        yield server
        assert server.process.poll() is None, server.log()  # no input killed it


@pytest.fixture
def server(
    module_server: ServerProcess,
    db_url: str,
    ollama: OllamaDouble,
    request: pytest.FixtureRequest,
) -> Iterator[ServerProcess]:
    """The module's server, with the database emptied and the double reset after each test;
    the test must not have caused a traceback in the server's log (unless it is a known bug)."""
    seen = len(module_server.log())
    yield module_server
    if request.node.get_closest_marker("xfail") is None:
        new = module_server.log()[seen:]
        assert "Traceback" not in new, new


def _alive(server: ServerProcess) -> None:
    assert server.process.poll() is None, server.log()
    assert httpx.get(server.base_url + "/health", timeout=5).status_code == 200


def _fuzz(task: tuple[str, str, str]) -> tuple[str, int, list[str]]:
    """One operation's cases in one generation mode, sent to the server: the operation, how
    many were sent, and the answers of 500 or more."""
    base_url, label, mode = task
    operation = _operations(base_url)[label]
    failures: list[str] = []
    tried = 0
    session = requests.Session()

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,  # the fixed seed: the same cases on every run, in any process
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
    def run(case: schemathesis.Case) -> None:
        nonlocal tried
        tried += 1
        response = case.call(session=session, timeout=10)
        if response.status_code >= 500:
            failures.append(
                f"{case.method} {case.formatted_path} body={case.body!r:.200} -> "
                f"{response.status_code} {response.text[:200]}"
            )

    with contextlib.suppress(Unsatisfiable):  # nothing invalid to send (GET /health)
        run()
    session.close()
    return label, tried, failures


@functools.cache
def _operations(base_url: str) -> dict[str, Any]:
    """The server's operations by label, from its ``/openapi.json`` (once per process)."""
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    return {op.label: op for op in (result.ok() for result in schema.get_all_operations())}


# Over a minute of generation when other work shares the CPUs: more than the default timeout.
@pytest.mark.timeout(600)
def test_fuzzed_requests_never_get_a_5xx(server: ServerProcess) -> None:
    """Valid and invalid data for every operation in the schema; every answer is below 500.

    Generating the cases takes far longer than sending them, and the server is idle meanwhile:
    the operations are spread over worker processes, one per CPU. Each (operation, mode) run is
    derandomized, so a worker sends exactly the cases this process would have."""
    labels = list(_operations(server.base_url))
    # The largest request schemas first, so that no worker is left with a long one at the end.
    by_size = sorted(
        labels,
        key=lambda label: -len(
            json.dumps(_operations(server.base_url)[label].definition.raw, default=str)
        ),
    )
    tasks = [
        (server.base_url, label, mode.value)
        for label in by_size
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    ]
    failures: list[str] = []
    tried: dict[str, int] = {}
    workers = max(2, min(len(os.sched_getaffinity(0)), 4))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for label, count, found in pool.imap_unordered(_fuzz, tasks):
            tried[label] = tried.get(label, 0) + count
            failures += found
    assert all(tried.get(label) for label in labels), tried  # every operation, even GET /health
    assert sum(tried.values()) >= 200, tried
    assert not failures, "\n".join(failures[:10])
    _alive(server)


# -- huge bodies ---------------------------------------------------------------------------------


def test_a_10_mb_body_with_content_length_is_refused_before_it_is_sent(
    server: ServerProcess,
) -> None:
    head = (
        f"POST {GENERATE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {TEN_MB}\r\n\r\n"
    ).encode()
    answer = raw_request(server.base_url, head, b'{"prompt": "')  # the rest never follows
    assert status_of(answer) == 413
    assert b'"code": "body_too_large"' in answer
    _alive(server)


def test_a_10_mb_chunked_body_is_refused_without_reading_it_all(server: ServerProcess) -> None:
    rss_before = vm_rss_kb(server.process.pid)
    host, port = server.base_url.removeprefix("http://").split(":")
    chunk = b"a" * 65536
    sent = 0
    answer = b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {GENERATE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        try:
            while sent < TEN_MB and not answer:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if select.select([sock], [], [], 0.002)[0]:
                    answer = sock.recv(65536)
        except OSError:  # the server closed the connection on us: it stopped reading
            pass
        deadline = time.monotonic() + 5
        while not answer and time.monotonic() < deadline:
            if select.select([sock], [], [], 0.1)[0]:
                answer = sock.recv(65536)
    assert status_of(answer) == 413
    # The kernel's socket buffers take a few MB that the server never reads; what matters is
    # that the answer came before the whole body was sent and the server's memory did not grow.
    assert sent < TEN_MB, "the server read the whole body before answering"
    assert vm_rss_kb(server.process.pid) - rss_before < 5 * 1024
    _alive(server)


# -- malformed bodies ----------------------------------------------------------------------------


def _post(server: ServerProcess, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"POST {GENERATE} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return raw_request(server.base_url, head, body)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b'{"prompt": "\xff\xfe caf\xc3"}', 400, id="invalid-utf8"),
        pytest.param(b'{"prompt": "hi"', 422, id="truncated"),  # FastAPI: JSON decode error
        pytest.param(b"[" * 100_000, 400, id="nested-arrays"),  # never closed
        pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400, id="nested-objects"),
        pytest.param(b"\x00\x01\x02", 422, id="binary"),
        pytest.param(b"", 422, id="empty"),
        pytest.param(b"null", 422, id="null"),
        pytest.param(b'{"prompt": "hi", "stream": "yes"}', 422, id="wrong-type"),
        pytest.param(b'{"prompt": "\\ud800"}', 400, id="lone-surrogate-prompt"),
        pytest.param(b'{"prompt": "hi", "system": "\\udfff"}', 400, id="lone-surrogate-system"),
        pytest.param(
            b'{"prompt": "hi", "options": {"stop": ["\\ud800"]}}', 400, id="lone-surrogate-stop"
        ),
        pytest.param(
            b'{"prompt": "hi", "options": {"temperature": 1e999}}',
            422,
            id="infinite-number",
        ),
        pytest.param(b'{"prompt": "hi", "options": {"top_p": NaN}}', 422, id="nan"),
        pytest.param(b'{"prompt": "hi", "oops": -Infinity}', 422, id="unknown-infinity"),
    ],
)
def test_malformed_bodies_are_4xx(
    server: ServerProcess, ollama: OllamaDouble, body: bytes, status: int
) -> None:
    answer = _post(server, body)
    assert status_of(answer) == status, answer[:300]
    if status == 400:  # an llmserve error body, with a code (422 is FastAPI's format)
        assert set(json.loads(answer.partition(b"\r\n\r\n")[2])) == {"detail", "code"}
    assert not ollama.generations
    _alive(server)


def test_wrong_content_type_is_422(server: ServerProcess, ollama: OllamaDouble) -> None:
    assert status_of(_post(server, b'{"prompt": "hi"}', "text/plain")) == 422
    assert status_of(_post(server, b"prompt=hi", "application/x-www-form-urlencoded")) == 422
    assert not ollama.generations


# -- {name} path tricks --------------------------------------------------------------------------

TRICKS = [
    "../",
    "../../etc/passwd",
    "%2e%2e",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%2f",
    "..%2fllama3.2",
    "%00",
    "llama3.2%00",
    "llama3.2%00../x",
    "%252e%252e%252f",
    "llama3.2/../qwen2.5:0.5b",
    "./llama3.2",
    "llama3.2:latest/..",
]


@pytest.mark.parametrize("trick", TRICKS)
@pytest.mark.parametrize(
    ("method", "prefix"),
    [("DELETE", "/api/v1/models/"), ("POST", "/api/v1/models/switch/")],
    ids=["delete", "switch"],
)
def test_path_tricks_in_model_names_are_400_and_never_forwarded(
    server: ServerProcess, ollama: OllamaDouble, method: str, prefix: str, trick: str
) -> None:
    head = (
        f"{method} {prefix}{trick} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    answer = raw_request(server.base_url, head)
    assert status_of(answer) == 400, answer[:300]
    assert b"invalid_model_name" in answer
    assert ollama.requests == []  # validated before any backend call


# -- huge headers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Big", "a" * 65536)],
        [(f"X-Part-{i}", "b" * 1024) for i in range(64)],
    ],
    ids=["one-64k-header", "64-1k-headers"],
)
def test_64_kb_of_headers_is_431(
    server: ServerProcess, ollama: OllamaDouble, headers: list[tuple[str, str]]
) -> None:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    for target in ("/health", GENERATE):
        answer = raw_request(
            server.base_url,
            f"POST {target} HTTP/1.1\r\nHost: x\r\n{lines}Content-Length: 0\r\n\r\n".encode(),
        )
        assert status_of(answer) == 431, answer[:300]
    assert not ollama.generations
    # A normal amount of headers still works.
    normal = httpx.get(server.base_url + "/health", headers={"X-Ok": "c" * 8192}, timeout=5)
    assert normal.status_code == 200
    _alive(server)
