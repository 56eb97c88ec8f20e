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
    """The default image's stages, the last one being the default image as a whole: its own
    instructions after those of the stage it is built ``FROM``."""
    all_stages = stages(dockerfile_instructions(API))
    return [*all_stages[:-1], _flattened(all_stages, all_stages[-1])]


@pytest.fixture(scope="module")
def cpu_image() -> list[tuple[str, str]]:
    """The ``cpu`` target's instructions, with those of the stages it is built ``FROM``."""
    all_stages = stages(dockerfile_instructions(API))
    (cpu,) = [stage for stage in all_stages if _stage_name(stage) == "cpu"]
    return _flattened(all_stages, cpu)


def _stage_name(stage: list[tuple[str, str]]) -> str | None:
    words = stage[0][1].split()
    return words[2] if len(words) == 3 and words[1].upper() == "AS" else None


def _flattened(
    all_stages: list[list[tuple[str, str]]], stage: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    base = stage[0][1].split()[0]
    parents = [other for other in all_stages if _stage_name(other) == base]
    if not parents:
        return stage
    return [*_flattened(all_stages, parents[0]), *stage[1:]]


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


def test_api_healthcheck_probes_the_port_serve_was_given_without_curl(api_stages):
    (healthcheck,) = _args(api_stages[-1], "HEALTHCHECK")
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["python", "/app/docker/healthcheck.py"]
    copies = " ".join(_args(api_stages[-1], "COPY"))
    assert "docker/healthcheck.py" in copies
    probe = (ROOT / "docker" / "healthcheck.py").read_text(encoding="utf-8")
    assert "/health" in probe and "urllib" in probe and "curl" not in probe


def test_no_parser_directive_asks_for_a_frontend_image():
    # `# syntax=...` makes BuildKit pull a frontend image: a host without internet cannot build.
    for dockerfile in (API, OLLAMA):
        first = dockerfile.read_text(encoding="utf-8").splitlines()[:5]
        assert not any(re.match(r"#\s*(syntax|escape|check)\s*=", line) for line in first)


def test_api_build_takes_a_private_index_and_ca_in_the_builders_only():
    text = API.read_text(encoding="utf-8")
    for argument in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_FIND_LINKS"):
        assert f"ARG {argument}" in text or f"    {argument}=" in text, argument
    all_stages = stages(dockerfile_instructions(API))
    for stage in all_stages:
        runs = [arguments for keyword, arguments in stage if keyword == "RUN"]
        for run in runs:
            if re.search(r"(?<![\w-])pip (install|wheel)", run):
                raise AssertionError(f"plain pip, without the build's CA: {run}")
            if "build-pip" in run:
                assert "--mount=type=secret,id=pip-ca" in run, run
    for name in ("runtime-base", "cpu", "runtime"):
        (stage,) = [s for s in all_stages if _stage_name(s) == name]
        assert not any("PIP_" in arguments for keyword, arguments in stage if keyword == "ARG")


def test_api_sqlite_default_lives_in_the_one_writable_folder(api_stages):
    env = " ".join(_args(api_stages[-1], "ENV"))
    assert "DATABASE_URL=sqlite:////data/llmserve.db" in env
    runs = " ".join(_args(api_stages[-1], "RUN"))
    assert "chown 10001:10001 /data" in runs


def test_cpu_target_serves_with_the_embedded_engine_and_keeps_state_in_a_volume(cpu_image):
    env = " ".join(_args(cpu_image, "ENV"))
    assert "LLM_BACKEND=embedded" in env
    assert "EMBEDDED_MODEL_PATH=/opt/llmserve/models/gemma-3-270m-q4_k_m.gguf" in env
    assert "DATABASE_URL=sqlite:////data/llmserve.db" in env
    assert _args(cpu_image, "VOLUME") == ['["/data"]']
    assert _args(cpu_image, "USER")[-1] == "10001:10001"
    assert any("cpu-builder" in copy for copy in _args(cpu_image, "COPY"))
    # The compiler stays in the stages that build; the image itself runs no apt and no pip.
    assert not [
        arguments for keyword, arguments in cpu_image if keyword == "RUN" and "pip" in arguments
    ]


def test_cpu_builder_installs_the_embedded_extra_from_the_compiled_wheel():
    all_stages = stages(dockerfile_instructions(API))
    (wheel,) = [s for s in all_stages if _stage_name(s) == "llama-wheel"]
    assert wheel[0][1] == "python:3.11 AS llama-wheel"  # the one with a compiler
    assert any("pip wheel" in a and "llama-cpp-python" in a for k, a in wheel if k == "RUN")
    assert any("GGML_NATIVE=OFF" in a for k, a in wheel if k == "ARG")
    (builder,) = [s for s in all_stages if _stage_name(s) == "cpu-builder"]
    runs = " ".join(a for k, a in builder if k == "RUN")
    assert "--extra embedded" in runs and "--find-links /tmp/wheels" in runs
    # OpenMP's runtime comes from the compiling stage, not from Debian: no apt anywhere.
    assert "libgomp.so.1" in " ".join(a for k, a in wheel if k == "RUN")
    assert 'python -c "import llama_cpp"' in runs
    assert "apt-get" not in API.read_text(encoding="utf-8")
    assert "built_in_model.py /opt/llmserve/models/gemma-3-270m-q4_k_m.gguf" in runs


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


def test_cpu_image_dependencies_add_the_embedded_extra(tmp_path):
    script = ROOT / "docker" / "lock_constraints.py"
    command = [sys.executable, str(script), "--extra", "embedded", str(ROOT), str(tmp_path)]
    subprocess.run(command, check=True, timeout=60)
    requirements = (tmp_path / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    assert requirements == project["dependencies"] + project["optional-dependencies"]["embedded"]


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
