"""The Makefile: every target documented and dry-runnable; setup and up do what the README says.

Targets that would call docker run in a scratch copy of the project with a stub ``docker`` first
on PATH, which records its arguments and succeeds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.static._files import ROOT, write_executable

TARGETS = [
    "help",
    "setup",
    "up",
    "up-prod",
    "up-cpu",
    "down",
    "logs",
    "shell",
    "migrate",
    "format",
    "format-check",
    "lint",
    "lint-fix",
    "typecheck",
    "test",
    "image-check",
    "bake-image",
]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def _make(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None):
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch copy of what the Makefile touches."""
    for name in ("Makefile", ".env.example"):
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


@pytest.fixture
def stub_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose ``docker`` appends its arguments to ``$DOCKER_STUB_LOG``."""
    bin_dir = tmp_path_factory.mktemp("stub-bin")
    write_executable(bin_dir / "docker", '#!/bin/sh\necho "$*" >> "$DOCKER_STUB_LOG"\nexit 0\n')
    log = bin_dir / "docker.log"
    log.touch()
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "DOCKER_STUB_LOG": str(log),
    }


def _docker_calls(env: dict[str, str]) -> list[str]:
    return Path(env["DOCKER_STUB_LOG"]).read_text(encoding="utf-8").splitlines()


def test_help_is_the_default_and_lists_every_target_with_a_description():
    result = _make()
    assert result.returncode == 0, result.stderr
    described = {}
    for line in result.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2:
            described[parts[0]] = parts[1]
    for target in TARGETS:
        assert described.get(target, "").strip(), f"`make help` does not describe {target}"


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_dry_runs(target):
    result = _make("-n", "--warn-undefined-variables", target)
    assert result.returncode == 0, result.stderr
    assert "undefined variable" not in result.stderr


def test_setup_creates_missing_env_files_keeps_existing_ones_and_pulls_postgres(project, stub_env):
    (project / ".env.dev").write_text("BUILT_IN_OLLAMA_MODEL=mine\n", encoding="utf-8")
    result = _make("setup", cwd=project, env=stub_env)
    assert result.returncode == 0, result.stderr
    assert (project / ".env.dev").read_text(encoding="utf-8") == "BUILT_IN_OLLAMA_MODEL=mine\n"
    assert (project / ".env.prod").read_bytes() == (project / ".env.example").read_bytes()
    assert _docker_calls(stub_env) == ["pull postgres:16-alpine"]
    # A second run changes nothing.
    (project / ".env.prod").write_text("edited\n", encoding="utf-8")
    assert _make("setup", cwd=project, env=stub_env).returncode == 0
    assert (project / ".env.prod").read_text(encoding="utf-8") == "edited\n"


def test_up_links_env_to_dev_and_uses_the_dev_override(project, stub_env):
    assert _make("setup", cwd=project, env=stub_env).returncode == 0
    result = _make("up", cwd=project, env=stub_env)
    assert result.returncode == 0, result.stderr
    assert os.readlink(project / ".env") == ".env.dev"
    assert _docker_calls(stub_env)[-1] == (
        "compose -f docker-compose.yml -f docker-compose.dev.yml up -d --build"
    )


def test_up_prod_links_env_to_prod_and_uses_the_compose_file_alone(project, stub_env):
    assert _make("setup", cwd=project, env=stub_env).returncode == 0
    assert _make("up", cwd=project, env=stub_env).returncode == 0
    result = _make("up-prod", cwd=project, env=stub_env)
    assert result.returncode == 0, result.stderr
    assert os.readlink(project / ".env") == ".env.prod"
    assert _docker_calls(stub_env)[-1] == "compose -f docker-compose.yml up -d --build"


def test_up_never_replaces_a_real_env_file(project, stub_env):
    assert _make("setup", cwd=project, env=stub_env).returncode == 0
    (project / ".env").write_text("MINE=1\n", encoding="utf-8")
    result = _make("up", cwd=project, env=stub_env)
    assert result.returncode != 0
    assert ".env is a regular file" in result.stderr
    assert (project / ".env").read_text(encoding="utf-8") == "MINE=1\n"
    assert not any(call.startswith("compose") for call in _docker_calls(stub_env))


def test_up_without_setup_says_so(project, stub_env):
    result = _make("up", cwd=project, env=stub_env)
    assert result.returncode != 0
    assert "make setup" in result.stderr
    assert _docker_calls(stub_env) == []


def test_migrate_runs_inside_the_api_container(project, stub_env):
    assert _make("migrate", cwd=project, env=stub_env).returncode == 0
    assert _docker_calls(stub_env) == ["compose exec api llmserve migrate"]


def test_bake_image_passes_model_tag_and_push():
    result = _make("-n", "bake-image", "MODEL=llama3.2:1b", "TAG=me/ollama:1", "PUSH=1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "poetry",
        "run",
        "llmserve",
        "bake-image",
        "--model",
        "'llama3.2:1b'",
        "--tag",
        "'me/ollama:1'",
        "--push",
    ]
