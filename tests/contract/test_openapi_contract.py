"""The OpenAPI document is the contract: schemathesis, with every check, against a real server.

``st run`` (schemathesis's own command line, as a user runs it) against ``/openapi.json`` of a
real ``llmserve serve`` wired to the Ollama double, with every check (``--checks all``), the
examples, coverage, fuzzing and stateful phases and a fixed seed, once without auth and once
with ``AUTH_REQUIRED=true`` (an admin key, and no key at all); the runs go on at once, each
server with its own double, which keeps the whole well under two minutes on two cores. Nothing
here names a route: the operations come from the document, so a route added tomorrow is fuzzed
too, and the run fails when its validation refuses what its schema allows
(``positive_data_acceptance``), accepts what its schema forbids (``negative_data_rejection``),
answers a status, a media type, a header or a body its schema does not declare (each event of
a stream included), or advertises the wrong methods in ``Allow``.

The hooks (``st_hooks.py``) put the double's models into half of the valid requests, in every
field the document marks as a model name, and ask for a stream in half of them: generations
are answered, not only refused. Every operation must be tested, and every operation that
documents a stream must have been answered both ways in the run without auth: with its JSON
and with its stream.

The double's models have every capability (vision, tools, embedding, thinking, insert): a
capability a model lacks is a refusal the schema cannot know of (``unsupported``), so the
models do not lack one.
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
#: Test cases per operation in the fuzzing phase (the coverage phase makes as many as the
#: schema calls for): what keeps the runs under their time budget. With a key, the server does
#: what it does without auth (the run without auth has every phase); without one, every
#: operation but the public ones is refused before it runs.
EXAMPLES = 5
KEY_EXAMPLES = 3
NO_KEY_EXAMPLES = 2
#: The run without auth, in this many ``st`` processes (each with some of the operations).
OPEN_RUNS = 2
EVERY_PHASE = "examples,coverage,fuzzing,stateful"
#: Workers of each run: one, as the two runs fill the two cores already, and two threads of one
#: ``st`` may parse Python at once, which CPython 3.11.7 can fail ("AST constructor recursion
#: depth mismatch", in hypothesis's description of a strategy).
WORKERS = 1
MODELS = ("llama3.2", "qwen2.5:0.5b")
CAPABILITIES = ("completion", "tools", "vision", "embedding", "thinking", "insert")
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
    return running_server(env, tmp, warm=True)


@dataclass
class _Run:
    """An ``st run`` under way (its output in a file: runs at once must not block on a pipe)."""

    process: subprocess.Popen[bytes]
    output: Path
    answers: Path
    started: float

    def wait(self) -> tuple[subprocess.CompletedProcess[str], float, list[dict[str, Any]]]:
        """Its report, how long it took, and the server's answers."""
        returncode = self.process.wait(timeout=600)
        took = self.output.stat().st_mtime - self.started  # when it wrote its last line
        text = self.output.read_text(errors="replace")
        lines = self.answers.read_text().splitlines() if self.answers.exists() else []
        done = subprocess.CompletedProcess(self.process.args, returncode, text, "")
        return done, took, [json.loads(line) for line in lines]


def _st(
    server: ServerProcess,
    tmp: Path,
    name: str,
    phases: str,
    *headers: str,
    examples: int = EXAMPLES,
    document: Path | None = None,
    operation_ids: list[str] | None = None,
) -> _Run:
    """``st run`` with every check, started (what it answered in ``tmp/<name>.answers``).

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
        "--generation-database",
        "none",
        *[part for header in headers for part in ("-H", header)],
    ]
    if operation_ids is not None:
        pattern = "|".join(map(re.escape, operation_ids))
        command += ["--include-operation-id-regex", f"^(?:{pattern})$"]
    answers = tmp / f"{name}.answers"
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.contract.st_hooks",
        "PYTHONPATH": str(ROOT),
        "CONTRACT_MODELS": ",".join(MODELS),
        "CONTRACT_ANSWERS": str(answers),
    }
    output = tmp / f"{name}.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    return _Run(process, output, answers, time.time())


def _document(server: ServerProcess, key: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    document: dict[str, Any] = httpx.get(
        server.base_url + "/openapi.json", headers=headers, timeout=10
    ).json()
    return document


def _passed(done: subprocess.CompletedProcess[str], count: int) -> int:
    """The number of generated cases; fails with schemathesis's report unless the run passed
    and tested its ``count`` operations."""
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-20000:]
    tested = re.search(r"Tested: (\d+)", output)
    assert tested is not None and int(tested.group(1)) == count, output[-3000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None, output[-3000:]
    return int(generated.group(1))


def _count(operations: dict[str, dict[str, Any]]) -> int:
    return sum(len(methods) for methods in operations.values())


def _groups(document: dict[str, Any], count: int) -> list[list[str]]:
    """The ids of the document's operations in ``count`` groups of about the same weight (the
    size of what they take and answer, which is what the coverage phase's work grows with);
    the operations a link joins stay in one group, for the stateful phase."""
    weights: dict[str, int] = {}
    joined: dict[str, str] = {}

    def root(name: str) -> str:
        while joined[name] != name:
            name = joined[name]
        return name

    for methods in document["paths"].values():
        for operation in methods.values():
            name = operation["operationId"]
            weights[name] = _size(operation, document, set())
            joined[name] = name
    for methods in document["paths"].values():
        for operation in methods.values():
            for response in operation["responses"].values():
                for link in response.get("links", {}).values():
                    target = _link_target(link, document)
                    if target in joined:
                        joined[root(target)] = root(operation["operationId"])
    parts: dict[str, list[str]] = {}
    for name in weights:
        parts.setdefault(root(name), []).append(name)
    groups: list[list[str]] = [[] for _ in range(count)]
    loads = [0] * count
    for part in sorted(parts.values(), key=lambda p: (-sum(weights[n] for n in p), p)):
        lightest = loads.index(min(loads))
        groups[lightest] += part
        loads[lightest] += sum(weights[n] for n in part)
    return groups


def _link_target(link: dict[str, Any], document: dict[str, Any]) -> str | None:
    """The id of the operation a link leads to (by ``operationId`` or ``operationRef``)."""
    if "operationId" in link:
        return str(link["operationId"])
    target: Any = document
    for part in str(link.get("operationRef", "")).removeprefix("#/").split("/"):
        target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
    return target.get("operationId") if isinstance(target, dict) else None


def _size(value: Any, document: dict[str, Any], seen: set[str]) -> int:
    """The length of ``value`` in JSON, with each schema it refers to counted once."""
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            target: Any = document
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            return _size(target, document, seen)
        return sum(len(key) + _size(item, document, seen) for key, item in value.items())
    if isinstance(value, list):
        return sum(_size(item, document, seen) for item in value)
    return len(json.dumps(value))


def _streams_answered_both_ways(
    operations: dict[str, dict[str, Any]], answers: list[dict[str, Any]]
) -> None:
    """Each operation that documents a stream documents its JSON answer too, and was answered
    with each (what they held is checked by ``content_type_conformance`` and
    ``response_schema_conformance``, event by event for Server-Sent Events)."""
    answered = {(a["method"], a["path"], a["media"]) for a in answers if a["status"] == 200}
    streaming = 0
    for path, methods in operations.items():
        for method, operation in methods.items():
            content = operation["responses"].get("200", {}).get("content", {})
            streams = [media for media in content if media in STREAMING]
            if not streams:
                continue
            streaming += 1
            for media in ("application/json", *streams):
                assert media in content, (method, path, sorted(content))
                assert (method.upper(), path, media) in answered, (method, path, media)
    assert streaming, "no operation documents a stream"


@dataclass
class _Outcome:
    tested: int
    done: subprocess.CompletedProcess[str]
    took: float
    answers: list[dict[str, Any]]


@dataclass
class _Runs:
    outcomes: dict[str, _Outcome]
    #: The operations of the document without auth.
    operations: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def runs(
    database_url: str,
    doubles: tuple[OllamaDouble, OllamaDouble],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[_Runs]:
    """The runs, all at once (a server per auth mode, each with its double): without
    auth, every phase; with ``AUTH_REQUIRED=true``, one with an admin key and one without."""
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
            documents = {"open": _document(server), "auth": _document(auth, admin)}
            # The document needs a key too: read with the admin key, the requests sent without.
            document = auth_dir / "openapi.json"
            document.write_text(json.dumps(documents["auth"]))
            # The run without auth has the most to do: it is split, so that the two cores
            # always have a run to serve while another waits for its server.
            groups = _groups(documents["open"], OPEN_RUNS)
            started = {
                f"open-{n}": (
                    len(group),
                    _st(server, open_dir, f"open-{n}", EVERY_PHASE, operation_ids=group),
                )
                for n, group in enumerate(groups)
            }
            auth_count = _count(documents["auth"]["paths"])
            started["key"] = auth_count, _st(
                auth,
                auth_dir,
                "key",
                "examples,fuzzing,stateful",
                f"Authorization: Bearer {admin}",
                examples=KEY_EXAMPLES,
            )
            started["nokey"] = auth_count, _st(
                auth,
                auth_dir,
                "nokey",
                "examples,fuzzing",
                examples=NO_KEY_EXAMPLES,
                document=document,
            )
            outcomes = {
                name: _Outcome(count, *run.wait()) for name, (count, run) in started.items()
            }
            servers = [(f"open-{n}", server) for n in range(OPEN_RUNS)]
            for name, process in [*servers, ("key", auth), ("nokey", auth)]:
                if process.process.poll() is not None:
                    outcomes[name].done.returncode = 1
                    outcomes[name].done.stdout += "\nthe server died during the run"
            yield _Runs(outcomes, documents["open"]["paths"])
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
def test_the_schema_and_the_server_agree_without_auth(runs: _Runs) -> None:
    split = [runs.outcomes[f"open-{n}"] for n in range(OPEN_RUNS)]
    cases = sum(_passed(run.done, run.tested) for run in split)
    assert sum(run.tested for run in split) == _count(runs.operations)
    _streams_answered_both_ways(runs.operations, [a for run in split for a in run.answers])
    took = max(run.took for run in split)
    print(f"\nschemathesis without auth: {cases} cases in {took:.1f} s")


@pytest.mark.timeout(300)
def test_the_schema_and_the_server_agree_with_auth(runs: _Runs) -> None:
    with_key, without = runs.outcomes["key"], runs.outcomes["nokey"]
    cases = _passed(with_key.done, with_key.tested)
    cases_without = _passed(without.done, without.tested)
    print(
        f"\nschemathesis with an admin key: {cases} cases in {with_key.took:.1f} s; "
        f"without a key: {cases_without} cases in {without.took:.1f} s"
    )
