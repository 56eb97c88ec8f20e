"""``tools/static_checks.sh`` runs every static check and passes (this is how CI proves it)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.static._files import ROOT

CHECKS = [
    "hadolint: Dockerfiles",
    "shellcheck: the container scripts and this script",
    "check-jsonschema: compose files against the Compose specification",
    "check-jsonschema: GitHub workflows",
    "make -n: every Makefile target",
]


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_static_checks_pass():
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "static_checks.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for check in CHECKS:
        assert f"ok: {check}" in result.stdout, f"{check!r} did not run"
    assert "all static checks passed" in result.stdout


def _scratch_copy(tmp_path):
    """The files the script checks, in a scratch tree that shares the project's .venv."""
    for name in (
        "docker",
        ".github",
        "tools/static_checks.sh",
        "Makefile",
        ".env.example",
        "docker-compose.yml",
        "docker-compose.dev.yml",
        "tests/docker-compose.test.yml",
    ):
        source, target = ROOT / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    if (ROOT / ".venv").is_dir():
        (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    return tmp_path


BREAKAGES = [
    pytest.param(
        "docker/ollama.Dockerfile",
        "FROM ollama/ollama:0.12.0",
        "FROM ollama/ollama:latest",
        "hadolint: Dockerfiles",
        id="unpinned-base-image",
    ),
    pytest.param(
        "docker/entrypoint.sh",
        'exec llmserve serve --host 0.0.0.0 --port 8000 "$@"',
        "exec llmserve serve --host 0.0.0.0 --port 8000 $@",
        "shellcheck: the container scripts and this script",
        id="unquoted-arguments",
    ),
    pytest.param(
        "docker-compose.yml",
        "              capabilities: [gpu]",
        "              capability: [gpu]",
        "check-jsonschema: compose files against the Compose specification",
        id="misspelt-gpu-capabilities",
    ),
    pytest.param(
        ".github/workflows/ci.yml",
        "    runs-on: ubuntu-latest",
        "    runs_on: ubuntu-latest",
        "check-jsonschema: GitHub workflows",
        id="misspelt-workflow-key",
    ),
    pytest.param(
        "Makefile",
        "\t$(POETRY) run pytest",
        "\t$(POETRY) run pytest $(PYTEST_ARGZ)",
        "make -n: every Makefile target",
        id="undefined-make-variable",
    ),
]


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    """One run of the script on a scratch tree with every breakage at once. Each breakage is
    in a file that only its own check reads, so each check fails for its own breakage alone
    (and ``test_static_checks_pass`` shows that every check passes on the real tree)."""
    tree = _scratch_copy(tmp_path_factory.mktemp("broken"))
    for breakage in BREAKAGES:
        path, old, new, _ = breakage.values
        target = tree / path
        text = target.read_text(encoding="utf-8")
        assert old in text, f"the test's anchor {old!r} is gone from {path}"
        target.write_text(text.replace(old, new, 1), encoding="utf-8")
    return subprocess.run(
        ["bash", str(tree / "tools" / "static_checks.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
@pytest.mark.parametrize(("path", "old", "new", "check"), BREAKAGES)
def test_static_checks_fail_loudly(broken_run, path, old, new, check):
    result = broken_run
    assert result.returncode != 0
    assert f"FAILED: {check}" in result.stderr
    assert f"ok: {check}" not in result.stdout
    summary = next(line for line in result.stderr.splitlines() if "static checks FAILED:" in line)
    assert check in summary
