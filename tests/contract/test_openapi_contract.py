"""The OpenAPI document is the contract: schemathesis, with every check, against a real server.

``st run`` (schemathesis's own command line, as a user runs it) against ``/openapi.json`` of a
real ``llmserve serve`` wired to the Ollama double, with every check (``--checks all``), the
examples, coverage, fuzzing and stateful phases and a fixed seed, once without auth and once
with ``AUTH_REQUIRED=true`` (an admin key, then no key at all); the two servers' runs go on at
once, each with its own double, which keeps the whole under two minutes on two cores. Nothing
here names a route: the operations come from the document, so a route added tomorrow is fuzzed
too, and the run fails when its validation refuses what its schema allows
(``positive_data_acceptance``), accepts what its schema forbids (``negative_data_rejection``),
answers a status, a media type, a header or a body its schema does not declare, or advertises
the wrong methods in ``Allow``.

Every operation must be tested, and every operation that documents a stream must document its
JSON answer too. (That each is also *answered* in both forms during the run is not checked yet:
the generated bodies rarely name a model the double has, so few generations succeed.)

The double's models have every capability (vision, tools, embedding): a capability a model
lacks is a refusal the schema cannot know of (``unsupported``), so the models do not lack one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from llmserve.db.base import Base
from llmserve.db.session import make_engine, make_sessions
from llmserve.services.keys import KeyService
from tests._server import ServerProcess, running_server
from tests.fakes.ollama_double import OllamaDouble
from tests.faults._tools import server_env

ROOT = Path(__file__).parents[2]
SEED = 21
#: Test cases per operation and phase: what keeps a run under its time budget.
EXAMPLES = 5
#: Workers of each run: one, as the two runs fill the two cores already, and two threads of one
#: ``st`` may parse Python at once, which CPython 3.11.7 can fail ("AST constructor recursion
#: depth mismatch", in hypothesis's description of a strategy).
WORKERS = 1
MODELS = ("llama3.2", "qwen2.5:0.5b")
CAPABILITIES = ("completion", "tools", "vision", "embedding")
STREAMING = ("text/event-stream", "application/x-ndjson")


@pytest.fixture(scope="module")
def doubles() -> Iterator[tuple[OllamaDouble, OllamaDouble]]:
    """One double per server: the runs go on at once, and one may delete a model."""
    with OllamaDouble.running() as one, OllamaDouble.running() as other:
        for double in (one, other):
            for name in list(double.models):
                double.remove_model(name)
            for name in MODELS:
                double.add_model(name, capabilities=CAPABILITIES)
        yield one, other


def _server(db_url: str, double: OllamaDouble, tmp: Path, **settings: object) -> Any:
    env = server_env(db_url, double.base_url, **settings)
    return running_server(env, tmp)


@dataclass
class _Run:
    """An ``st run`` under way (its output in a file: runs at once must not block on a pipe)."""

    process: subprocess.Popen[bytes]
    output: Path
    started: float

    def wait(self) -> tuple[subprocess.CompletedProcess[str], float]:
        """Its answer and how long it took."""
        returncode = self.process.wait(timeout=600)
        took = time.monotonic() - self.started
        text = self.output.read_text(errors="replace")
        return subprocess.CompletedProcess(self.process.args, returncode, text, ""), took


def _st(
    server: ServerProcess,
    tmp: Path,
    name: str,
    phases: str,
    *headers: str,
    examples: int = EXAMPLES,
    document: Path | None = None,
) -> _Run:
    """``st run`` with every check, started (its HAR report in ``tmp/<name>.har``).

    Its configuration (``tmp/schemathesis.toml``) turns off the crash cache, and the example
    database is off: a run leaves nothing in the repository (``.schemathesis/``) and does not
    replay an earlier run's cases."""
    config = tmp / "schemathesis.toml"
    config.write_text("[cache]\nenabled = false\n")
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(config),
        "run",
        *(
            (str(document), "--url", server.base_url)
            if document
            else (server.base_url + "/openapi.json",)
        ),
        "--checks",
        "all",
        "--phases",
        phases,
        "--seed",
        str(SEED),
        "--max-examples",
        str(examples),
        "--workers",
        str(WORKERS),
        "--no-color",
        "--output-truncate",
        "false",
        "--report",
        "har",
        "--report-har-path",
        str(tmp / f"{name}.har"),
        "--generation-database",
        "none",
        *[part for header in headers for part in ("-H", header)],
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.contract.st_hooks", "PYTHONPATH": str(ROOT)}
    output = tmp / f"{name}.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    return _Run(process, output, time.monotonic())


def _document(server: ServerProcess, key: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    document: dict[str, Any] = httpx.get(
        server.base_url + "/openapi.json", headers=headers, timeout=10
    ).json()
    return document


def _operations(server: ServerProcess, key: str | None = None) -> dict[str, dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = _document(server, key)["paths"]
    return paths


def _passed(done: subprocess.CompletedProcess[str], operations: dict[str, Any]) -> int:
    """The number of generated cases; fails with schemathesis's report unless the run passed
    and tested every operation of the document."""
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-20000:]
    count = sum(len(methods) for methods in operations.values())
    tested = re.search(r"Tested: (\d+)", output)
    assert tested is not None and int(tested.group(1)) == count, output[-3000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None, output[-3000:]
    return int(generated.group(1))


def _streams_declare_both_media_types(operations: dict[str, dict[str, Any]]) -> None:
    """Each operation that documents a stream documents its JSON answer too (``stream: false``);
    what it really answers in either form is held to that by ``content_type_conformance``."""
    streaming = 0
    for path, methods in operations.items():
        for operation in methods.values():
            content = operation["responses"].get("200", {}).get("content", {})
            if any(media in STREAMING for media in content):
                streaming += 1
                assert "application/json" in content, (path, sorted(content))
    assert streaming, "no operation documents a stream"


@dataclass
class _Outcome:
    operations: dict[str, dict[str, Any]]
    done: subprocess.CompletedProcess[str]
    took: float
    har: Path


@pytest.fixture(scope="module")
def runs(
    database_url: str,
    doubles: tuple[OllamaDouble, OllamaDouble],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, _Outcome]]:
    """The three runs, the two servers' at once (a server per auth mode, each with its double):
    without auth, every phase; with ``AUTH_REQUIRED=true``, an admin key and then no key."""
    tmp = tmp_path_factory.mktemp("contract")
    open_dir, auth_dir = tmp / "open", tmp / "auth"
    open_dir.mkdir()
    auth_dir.mkdir()
    keys = KeyService(make_sessions(make_engine(database_url)))
    admin, _ = keys.create("contract-admin", admin=True, actor="contract-test")
    try:
        with (
            _server(database_url, doubles[0], open_dir) as server,
            _server(database_url, doubles[1], auth_dir, AUTH_REQUIRED="true") as auth,
        ):
            open_ops, auth_ops = _operations(server), _operations(auth, admin)
            everything = _st(server, open_dir, "run", "examples,coverage,fuzzing,stateful")
            with_key = _st(
                auth, auth_dir, "key", "examples,fuzzing,stateful", f"Authorization: Bearer {admin}"
            )
            outcomes = {"key": _Outcome(auth_ops, *with_key.wait(), auth_dir / "key.har")}
            # The document needs a key too: read with the admin key, the requests sent without.
            document = auth_dir / "openapi.json"
            document.write_text(json.dumps(_document(auth, admin)))
            without = _st(
                auth, auth_dir, "nokey", "examples,fuzzing", examples=2, document=document
            )
            outcomes["nokey"] = _Outcome(auth_ops, *without.wait(), auth_dir / "nokey.har")
            outcomes["open"] = _Outcome(open_ops, *everything.wait(), open_dir / "run.har")
            for name, process in (("open", server), ("nokey", auth)):
                if process.process.poll() is not None:
                    outcomes[name].done.returncode = 1
                    outcomes[name].done.stdout += "\nthe server died during the run"
            yield outcomes
    finally:
        _empty(database_url)


def _empty(database_url: str) -> None:
    """What ``db_url`` does after a test: the session database emptied for the next ones."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        names = ", ".join(table.name for table in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
    engine.dispose()


@pytest.mark.timeout(300)
def test_the_schema_and_the_server_agree_without_auth(runs: dict[str, _Outcome]) -> None:
    run = runs["open"]
    cases = _passed(run.done, run.operations)
    _streams_declare_both_media_types(run.operations)
    print(f"\nschemathesis without auth: {cases} cases in {run.took:.1f} s")


@pytest.mark.timeout(300)
def test_the_schema_and_the_server_agree_with_auth(runs: dict[str, _Outcome]) -> None:
    with_key, without = runs["key"], runs["nokey"]
    cases = _passed(with_key.done, with_key.operations)
    cases_without = _passed(without.done, without.operations)
    print(
        f"\nschemathesis with an admin key: {cases} cases in {with_key.took:.1f} s; "
        f"without a key: {cases_without} cases in {without.took:.1f} s"
    )
