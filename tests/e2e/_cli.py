"""Running ``llmserve`` commands as real subprocesses, for the CLI tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LLMSERVE = [sys.executable, "-m", "llmserve"]


def run(
    args: list[str], env: dict[str, str], cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LLMSERVE, *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_red_line(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error:")
