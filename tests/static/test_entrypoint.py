"""``docker/entrypoint.sh`` run for real with a scripted ``llmserve`` first on PATH.

The fake's ``migrate`` fails with ``$FAKE_MIGRATE_RC`` until its ``$FAKE_OK_AFTER``-th call;
its ``serve`` prints its arguments and PID, so the test can tell that the entrypoint exec'd it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.static._files import ROOT, write_executable

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"

FAKE_LLMSERVE = """#!/bin/sh
if [ "$1" = migrate ]; then
    n=$(($(cat "$FAKE_COUNT" 2>/dev/null || echo 0) + 1))
    echo "$n" > "$FAKE_COUNT"
    [ "$n" -ge "$FAKE_OK_AFTER" ] && exit 0
    exit "$FAKE_MIGRATE_RC"
fi
echo "pid=$$ args=$*"
"""

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh")


def _start(tmp_path: Path, ok_after: int, migrate_rc: int = 7, timeout_s: int = 60, **extra: str):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_executable(bin_dir / "llmserve", FAKE_LLMSERVE)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_COUNT": str(tmp_path / "count"),
        "FAKE_OK_AFTER": str(ok_after),
        "FAKE_MIGRATE_RC": str(migrate_rc),
        "DB_WAIT_TIMEOUT_S": str(timeout_s),
        **extra,
    }
    process = subprocess.Popen(
        ["sh", str(ENTRYPOINT), "--reload"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.communicate(timeout=60)
    attempts = int((tmp_path / "count").read_text())
    return process, stdout, stderr, attempts


def test_waits_for_the_database_then_execs_the_server(tmp_path):
    process, stdout, stderr, attempts = _start(tmp_path, ok_after=2)
    assert process.returncode == 0, stderr
    assert attempts == 2
    assert "waiting for the database" in stderr
    # Same PID: the server replaced the shell, so signals sent to the container reach it.
    assert stdout.strip() == f"pid={process.pid} args=serve --host 0.0.0.0 --port 8000 --reload"


def test_any_other_migrate_failure_stops_at_once(tmp_path):
    process, stdout, stderr, attempts = _start(tmp_path, ok_after=99, migrate_rc=1)
    assert process.returncode == 1
    assert attempts == 1
    assert "not starting the server" in stderr
    assert stdout == ""


def test_a_bad_setting_stops_at_once_leaving_migrates_line_alone(tmp_path):
    # migrate exits 2 for a bad setting, after its one line naming it: no retry, no second line.
    process, stdout, stderr, attempts = _start(tmp_path, ok_after=99, migrate_rc=2)
    assert process.returncode == 2
    assert attempts == 1
    assert stderr == stdout == ""


def test_its_own_lines_are_json_when_json_logs_are_asked(tmp_path):
    process, _, stderr, _ = _start(tmp_path, ok_after=2, LOG_FORMAT="json")
    assert process.returncode == 0
    (line,) = [json.loads(line) for line in stderr.splitlines()]
    assert line["level"] == "WARNING" and line["logger"] == "entrypoint"
    assert "waiting for the database" in line["message"]


def test_the_wait_is_bounded(tmp_path):
    process, stdout, stderr, attempts = _start(tmp_path, ok_after=99, timeout_s=1)
    assert process.returncode == 1
    assert 1 <= attempts <= 3
    assert "still unavailable" in stderr
    assert stdout == ""
