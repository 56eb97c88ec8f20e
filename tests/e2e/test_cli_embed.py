"""``llmserve embed`` and ``--format`` on ``generate``: real subprocesses against the double."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select as sql_select

from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import RequestLogRecord
from tests._cli_fork import run
from tests.e2e._cli import assert_one_red_line
from tests.e2e._cli import run as cold
from tests.fakes.ollama_double import OllamaDouble, Script


def last_chat(ollama: OllamaDouble) -> dict[str, Any]:
    return [r.json for r in ollama.requests if r.path == "/api/chat"][-1]


# -- embed ---------------------------------------------------------------------------------------


def test_embed_prints_the_vector_as_json(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble, db_url: str
) -> None:
    # As a user starts it; the other runs are forked from a warm interpreter (_cli_fork.py).
    result = cold(["embed", "the quick brown fox"], subprocess_env, tmp_path)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    record = ollama.embeddings[-1]
    assert record.inputs == ["the quick brown fox"]
    assert payload == {
        "model": record.model,
        "embeddings": record.embeddings,
        "usage": {"prompt_tokens": 4},
    }
    assert len(payload["embeddings"][0]) == 16
    assert record.model.startswith("llama3.2")  # the active model when EMBEDDING_MODEL is unset
    engine = make_engine(db_url)
    with make_sessions(engine)() as session:
        rows = [(r.route, r.status) for r in session.scalars(sql_select(RequestLogRecord))]
    engine.dispose()
    assert rows == [("cli", "ok")]


def test_embed_several_texts_with_a_model_and_dimensions(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    args = ["embed", "one", "two words", "--model", "qwen2.5:0.5b", "--dimensions", "8"]
    result = run(args, subprocess_env, tmp_path)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    record = ollama.embeddings[-1]
    assert record.inputs == ["one", "two words"]
    assert record.dimensions == 8
    assert record.model == payload["model"] == "qwen2.5:0.5b"
    assert [len(v) for v in payload["embeddings"]] == [8, 8]
    assert payload["embeddings"] == record.embeddings
    assert payload["usage"] == {"prompt_tokens": 3}


def test_embed_uses_embedding_model(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    env = {**subprocess_env, "EMBEDDING_MODEL": "qwen2.5:0.5b"}
    result = run(["embed", "hi"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == ollama.embeddings[-1].model == "qwen2.5:0.5b"


@pytest.mark.parametrize("argument", [["-"], []], ids=["dash", "nothing"])
def test_embed_reads_the_text_from_stdin(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble, argument: list[str]
) -> None:
    result = run(["embed", *argument], subprocess_env, tmp_path, stdin="from a pipe\n")
    assert result.returncode == 0, result.stderr
    assert ollama.embeddings[-1].inputs == ["from a pipe"]
    same = run(["embed", "from a pipe"], subprocess_env, tmp_path)
    assert json.loads(same.stdout) == json.loads(result.stdout)


@pytest.mark.parametrize(
    ("args", "stdin"), [(["embed", "  "], None), (["embed", "-"], "\n")], ids=["blank", "empty"]
)
def test_embed_with_no_text_is_one_red_line(
    subprocess_env: dict[str, str],
    tmp_path: Path,
    ollama: OllamaDouble,
    args: list[str],
    stdin: str | None,
) -> None:
    result = run(args, subprocess_env, tmp_path, stdin=stdin)
    assert_one_red_line(result)
    assert result.returncode == 2
    assert ollama.embeddings == []


def test_embed_with_an_unknown_model_is_one_red_line(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    result = run(["embed", "hi", "--model", "nope:1b"], subprocess_env, tmp_path)
    assert_one_red_line(result)
    assert result.stdout == ""


def test_embed_with_the_backend_down_is_one_red_line(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**subprocess_env, "OLLAMA_BASE_URL": "http://127.0.0.1:9"}
    result = run(["embed", "hi"], env, tmp_path)
    assert_one_red_line(result)
    assert result.returncode == 9


# -- generate --format ---------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}


def test_generate_format_json_sends_json(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    result = run(["generate", "Describe Paris", "--format", "json"], subprocess_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert last_chat(ollama)["format"] == "json"
    assert isinstance(json.loads(result.stdout), dict)


def test_generate_format_schema_file_sends_the_schema(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    args = ["generate", "Describe Paris", "--format", "@schema.json", "--json"]
    result = run(args, subprocess_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert last_chat(ollama)["format"] == SCHEMA
    answer = json.loads(json.loads(result.stdout)["response"])
    assert set(answer) >= {"city", "population"}


def test_generate_without_format_sends_none(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["plain"]))
    assert run(["generate", "hi"], subprocess_env, tmp_path).returncode == 0
    assert "format" not in last_chat(ollama)


@pytest.mark.parametrize(
    ("value", "content", "says"),
    [
        ("xml", None, "--format must be"),
        ("@", None, "--format must be"),
        ("@missing.json", None, "cannot read"),
        ("@bad.json", "{not json", "not valid JSON"),
        ("@list.json", "[1, 2]", "JSON object"),
        ("@invalid.json", '{"type": 5}', "not a valid JSON Schema"),
    ],
)
def test_a_bad_format_is_one_red_line_and_exit_2(
    subprocess_env: dict[str, str],
    tmp_path: Path,
    ollama: OllamaDouble,
    value: str,
    content: str | None,
    says: str,
) -> None:
    if content is not None:
        (tmp_path / value[1:]).write_text(content)
    for command in (["generate", "hi"], ["chat", "--json"]):
        result = run([*command, "--format", value], subprocess_env, tmp_path, stdin="hi\n")
        assert_one_red_line(result)
        assert result.returncode == 2
        assert says in result.stderr
    assert not [r for r in ollama.requests if r.path == "/api/chat"]
