"""The Dockerfiles keep their promises, and avoid the known pitfalls of baking Ollama images."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import pytest

from tests.static._files import ROOT, dockerfile_instructions, stages

API = ROOT / "docker" / "api.Dockerfile"
OLLAMA = ROOT / "docker" / "ollama.Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


@pytest.fixture(scope="module")
def api_stages() -> list[list[tuple[str, str]]]:
    return stages(dockerfile_instructions(API))


@pytest.fixture(scope="module")
def ollama_instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(OLLAMA)


def _args(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for kw, arguments in instructions if kw == keyword]


def test_api_image_is_multi_stage_with_a_slim_final_stage(api_stages):
    assert len(api_stages) >= 2
    final_from = api_stages[-1][0][1]
    assert re.match(r"python:3\.11-slim\b", final_from), final_from


def test_api_final_stage_has_no_build_tools(api_stages):
    final = " ".join(arguments for _, arguments in api_stages[-1])
    for tool in ("gcc", "g++", "build-essential", "make ", "clang", "poetry"):
        assert tool not in final, f"{tool!r} in the final stage"
    assert not any(kw == "RUN" and "apt-get install" in a for kw, a in api_stages[-1])


def test_api_runs_as_a_numeric_non_root_user(api_stages):
    users = _args(api_stages[-1], "USER")
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]


def test_api_healthcheck_probes_health_without_curl(api_stages):
    (healthcheck,) = _args(api_stages[-1], "HEALTHCHECK")
    assert "/health" in healthcheck
    assert "urllib" in healthcheck
    assert "curl" not in healthcheck


def test_api_ships_migrations_entrypoint_and_port(api_stages):
    everything = [item for stage in api_stages for item in stage]
    copies = " ".join(_args(everything, "COPY"))
    assert "migrations/" in copies
    assert "alembic.ini" in copies
    assert "llmserve/" in copies
    assert "docker/entrypoint.sh" in copies
    final = api_stages[-1]
    assert "8000" in _args(final, "EXPOSE")
    assert json.loads(_args(final, "ENTRYPOINT")[-1]) == ["/app/docker/entrypoint.sh"]
    # The python base image's CMD ["python3"] must not reach the entrypoint as arguments.
    assert json.loads(_args(final, "CMD")[-1]) == []
    assert any("/opt/venv/bin" in env for env in _args(final, "ENV")), "llmserve not on PATH"


def test_api_build_context_sends_what_the_dockerfile_copies_and_no_secrets(api_stages):
    ignore = (ROOT / "docker" / "api.Dockerfile.dockerignore").read_text(encoding="utf-8")
    patterns = [line for line in ignore.splitlines() if line and not line.startswith("#")]
    assert patterns[0] == "*", "the API build context must be an allowlist"
    allowed = {pattern[1:] for pattern in patterns if pattern.startswith("!")}
    for stage in api_stages:
        for keyword, arguments in stage:
            if keyword != "COPY" or "--from=" in arguments:
                continue
            sources = [word for word in arguments.split() if not word.startswith("--")][:-1]
            for source in sources:
                assert source.rstrip("/") in allowed, f"COPY {source} is not in the build context"
    assert not any(".env" in pattern or ".venv" in pattern for pattern in allowed)


def test_ollama_build_context_is_empty():
    ignore = (ROOT / "docker" / "ollama.Dockerfile.dockerignore").read_text(encoding="utf-8")
    assert [line for line in ignore.splitlines() if line and not line.startswith("#")] == ["*"]
    assert not [a for kw, a in dockerfile_instructions(OLLAMA) if kw in {"COPY", "ADD"}]


def test_api_image_dependencies_are_the_locked_runtime_ones(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "docker" / "lock_constraints.py"), str(ROOT), str(tmp_path)],
        check=True,
        timeout=60,
    )
    requirements = (tmp_path / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert requirements == pyproject["project"]["dependencies"]
    pins = dict(
        line.split("==")
        for line in (tmp_path / "constraints.txt").read_text(encoding="utf-8").splitlines()
    )
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")
        assert name in pins, f"{name} is not in poetry.lock: run poetry lock"
    # Dev tools and the embedded engine's extra stay out of the image.
    assert not any(req.startswith(("pytest", "llama-cpp-python")) for req in requirements)


def test_entrypoint_migrates_with_a_bounded_wait_then_execs_the_server():
    text = ENTRYPOINT.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    assert "set -eu" in text
    assert "llmserve migrate" in text
    assert "deadline" in text and "exit 1" in text
    last = [line for line in text.splitlines() if line.strip()][-1]
    assert last.startswith("exec llmserve serve --host 0.0.0.0 --port 8000")
    assert last.endswith('"$@"')
    assert ENTRYPOINT.stat().st_mode & 0o111, "entrypoint.sh is not executable"


def test_ollama_base_is_pinned(ollama_instructions):
    froms = _args(ollama_instructions, "FROM")
    assert len(froms) == 1
    assert re.fullmatch(r"ollama/ollama:\d+\.\d+\.\d+", froms[0]), froms[0]


def test_ollama_bakes_the_model_in_one_run(ollama_instructions):
    assert "BUILT_IN_OLLAMA_MODEL" in _args(ollama_instructions, "ARG")
    runs = _args(ollama_instructions, "RUN")
    baking = [run for run in runs if "ollama pull" in run]
    assert len(baking) == 1, "serve, pull and stop must share one RUN"
    (run,) = baking
    order = [
        run.index("ollama serve"),
        run.index("$!"),
        run.index("until ollama list"),
        run.index('ollama pull "${BUILT_IN_OLLAMA_MODEL}"'),
        run.index('kill "$pid"', run.index("ollama pull")),
        run.index('wait "$pid"'),
    ]
    assert order == sorted(order)
    assert re.search(r"-ge \d+", run), "the wait for the server is not bounded"
    assert "-z" in run and "exit 1" in run, "an empty model must fail the build"
    assert "pkill" not in run and "sleep 5" not in run


def test_ollama_healthcheck_labels_and_env(ollama_instructions):
    (healthcheck,) = _args(ollama_instructions, "HEALTHCHECK")
    assert "ollama list" in healthcheck
    labels = " ".join(_args(ollama_instructions, "LABEL"))
    assert 'io.llmserve.built-in-model="${BUILT_IN_OLLAMA_MODEL}"' in labels
    assert "org.opencontainers.image.title" in labels
    assert "BUILT_IN_OLLAMA_MODEL=${BUILT_IN_OLLAMA_MODEL}" in _args(ollama_instructions, "ENV")


def test_ollama_image_keeps_the_base_entrypoint(ollama_instructions):
    # /bin/ollama with CMD serve comes from the base image; overriding it would break `serve`.
    assert not _args(ollama_instructions, "ENTRYPOINT")
    assert not _args(ollama_instructions, "VOLUME")
