"""``llmserve bake-image`` as a user runs it: a real process, with docker stubbed on PATH.

Each run happens in an empty directory (no ``.env``) with ``BUILT_IN_OLLAMA_MODEL`` removed from
the environment unless a test sets it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmserve.cli.bake_image import default_tag
from tests._cli_fork import run as forked
from tests.static._files import ROOT, env_without, write_executable

DOCKERFILE = ROOT / "docker" / "ollama.Dockerfile"


def _run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``llmserve bake-image ARGS``, forked from a warm interpreter (``tests/_cli_fork.py``)."""
    return forked(
        ["bake-image", *args], env_without("BUILT_IN_OLLAMA_MODEL", "DOCKER_STUB_LOG", **env), cwd
    )


def _cold(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The same, started from nothing as a user starts it."""
    return subprocess.run(
        [sys.executable, "-m", "llmserve", "bake-image", *args],
        cwd=cwd,
        env=env_without("BUILT_IN_OLLAMA_MODEL", "DOCKER_STUB_LOG", **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _stub_docker(directory: Path, script: str) -> str:
    """A directory holding only a ``docker`` stub; returns it as a PATH."""
    directory.mkdir()
    write_executable(directory / "docker", "#!/bin/sh\n" + script)
    return str(directory)


def test_dry_run_prints_the_exact_build_command(tmp_path):
    result = _cold(tmp_path, "--model", "llama3.2:1b", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "docker build -f docker/ollama.Dockerfile --build-arg BUILT_IN_OLLAMA_MODEL=llama3.2:1b"
        " -t llmserve-ollama:llama3.2-1b .\n"
    )


def test_dry_run_with_push_tag_file_and_context(tmp_path):
    result = _run(
        tmp_path,
        "--model",
        "qwen2.5:0.5b",
        "--tag",
        "registry.example/team/ollama:q",
        "--file",
        "my dir/ollama.Dockerfile",
        "--context",
        "src",
        "--push",
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "docker build -f 'my dir/ollama.Dockerfile' --build-arg BUILT_IN_OLLAMA_MODEL=qwen2.5:0.5b"
        " -t registry.example/team/ollama:q src",
        "docker push registry.example/team/ollama:q",
    ]


def test_dry_run_needs_no_docker(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = _run(tmp_path, "--model", "llama3.2:1b", "--dry-run", PATH=str(empty))
    assert result.returncode == 0, result.stderr


def test_the_model_defaults_to_built_in_ollama_model(tmp_path):
    result = _run(tmp_path, "--dry-run", BUILT_IN_OLLAMA_MODEL="qwen2.5:0.5b")
    assert result.returncode == 0, result.stderr
    assert "--build-arg BUILT_IN_OLLAMA_MODEL=qwen2.5:0.5b -t llmserve-ollama:qwen2.5-0.5b" in (
        result.stdout
    )


def test_the_model_defaults_to_dotenv(tmp_path):
    (tmp_path / ".env").write_text("BUILT_IN_OLLAMA_MODEL=gemma3:270m\n", encoding="utf-8")
    result = _run(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "BUILT_IN_OLLAMA_MODEL=gemma3:270m" in result.stdout


def test_an_explicit_model_ignores_unrelated_bad_settings(tmp_path):
    result = _run(tmp_path, "--model", "llama3.2:1b", "--dry-run", DATABASE_URL="mysql://x")
    assert result.returncode == 0, result.stderr


def test_no_model_anywhere_is_one_line_and_exit_2(tmp_path):
    result = _run(tmp_path, "--dry-run")
    assert result.returncode == 2
    assert "BUILT_IN_OLLAMA_MODEL" in _one_error_line(result)
    assert result.stdout == ""


@pytest.mark.parametrize("model", ["", "two words", "bad:tag:here!"])
def test_an_invalid_model_is_one_line_and_exit_2(tmp_path, model):
    result = _run(tmp_path, "--model", model, "--dry-run")
    assert result.returncode == 2
    assert "invalid model name" in _one_error_line(result)


def test_docker_missing_is_one_clear_line(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = _run(tmp_path, "--model", "llama3.2:1b", "--file", str(DOCKERFILE), PATH=str(empty))
    assert result.returncode != 0
    assert "docker is not installed" in _one_error_line(result)


def test_daemon_not_running_is_one_clear_line(tmp_path):
    path = _stub_docker(
        tmp_path / "bin",
        'if [ "$1" = info ]; then\n'
        '  echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2\n'
        "  exit 1\n"
        "fi\n"
        'echo "build must not start" >&2\n'
        "exit 99\n",
    )
    result = _run(tmp_path, "--model", "llama3.2:1b", "--file", str(DOCKERFILE), PATH=path)
    assert result.returncode == 1
    line = _one_error_line(result)
    assert "Docker daemon is not running" in line
    assert "Cannot connect" in line


def test_docker_output_streams_and_its_exit_code_passes_through(tmp_path):
    path = _stub_docker(
        tmp_path / "bin",
        '[ "$1" = info ] && exit 0\n'
        'echo "step 1/2 on stdout: $*"\n'
        'echo "step 2/2 on stderr" >&2\n'
        "exit 3\n",
    )
    result = _run(tmp_path, "--model", "llama3.2:1b", "--file", str(DOCKERFILE), PATH=path)
    assert result.returncode == 3
    assert "step 1/2 on stdout: build -f" in result.stdout
    assert "BUILT_IN_OLLAMA_MODEL=llama3.2:1b -t llmserve-ollama:llama3.2-1b" in result.stdout
    assert "step 2/2 on stderr" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_dockerfile_is_one_line_before_docker_runs(tmp_path):
    log = tmp_path / "docker.log"
    path = _stub_docker(tmp_path / "bin", 'echo "$*" >> "$DOCKER_STUB_LOG"\nexit 0\n')
    result = _run(tmp_path, "--model", "llama3.2:1b", PATH=path, DOCKER_STUB_LOG=str(log))
    assert result.returncode == 2
    assert "no Dockerfile at docker/ollama.Dockerfile" in _one_error_line(result)
    assert not log.exists()


def test_build_then_push_when_docker_succeeds(tmp_path):
    log = tmp_path / "docker.log"
    path = _stub_docker(tmp_path / "bin", 'echo "$*" >> "$DOCKER_STUB_LOG"\nexit 0\n')
    args = ["--model", "llama3.2:1b", "--file", str(DOCKERFILE), "--context", str(ROOT), "--push"]
    result = _run(tmp_path, *args, PATH=path, DOCKER_STUB_LOG=str(log))
    assert result.returncode == 0, result.stderr
    assert log.read_text(encoding="utf-8").splitlines() == [
        "info --format {{.ServerVersion}}",
        f"build -f {DOCKERFILE} --build-arg BUILT_IN_OLLAMA_MODEL=llama3.2:1b"
        f" -t llmserve-ollama:llama3.2-1b {ROOT}",
        "push llmserve-ollama:llama3.2-1b",
    ]
    # The commands are echoed to stderr; stdout carries only docker's own output.
    assert result.stdout == ""
    assert "$ docker push llmserve-ollama:llama3.2-1b" in result.stderr


@pytest.mark.parametrize(
    ("model", "tag"),
    [
        ("llama3.2", "llmserve-ollama:llama3.2"),
        ("llama3.2:1b", "llmserve-ollama:llama3.2-1b"),
        (
            "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M",
            "llmserve-ollama:hf.co-bartowski-Llama-3.2-1B-GGUF-Q4_K_M",
        ),
    ],
)
def test_default_tag_is_tag_safe(model, tag):
    assert default_tag(model) == tag
