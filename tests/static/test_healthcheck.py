"""``docker/healthcheck.py``, the API images' HEALTHCHECK: it probes the port ``serve`` was
really given (a ``--port`` passed to the container included), not a fixed 8000."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from tests.static._files import ROOT


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "docker" / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.delenv("HOST_BIND_IP", raising=False)


def _fake_proc(tmp_path: Path, processes: dict[int, list[str]]) -> Path:
    for pid, argv in processes.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (tmp_path / "self").mkdir()
    return tmp_path


def test_finds_the_serve_process_and_its_arguments(probe: ModuleType, tmp_path: Path) -> None:
    proc = _fake_proc(
        tmp_path,
        {
            1: ["/bin/sh", "/app/docker/entrypoint.sh"],
            7: ["/opt/venv/bin/python", "/opt/venv/bin/llmserve", "serve", "--port", "9000"],
            9: ["python", "-m", "llmserve", "serve", "--port", "9999"],
        },
    )
    assert probe.serve_arguments(proc) == ["--port", "9000"]  # the oldest one


def test_no_serve_process_means_no_arguments(probe: ModuleType, tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {1: ["/bin/sh", "-c", "echo serve"], 2: ["llmserve"]})
    assert probe.serve_arguments(proc) is None


@pytest.mark.parametrize(
    ("arguments", "url"),
    [
        (["--host", "0.0.0.0", "--port", "8000"], "http://127.0.0.1:8000/health"),
        (["--host", "0.0.0.0", "--port", "8000", "--port", "9000"], "http://127.0.0.1:9000/health"),
        (["--host", "0.0.0.0", "--port=8000", "--port=9001"], "http://127.0.0.1:9001/health"),
        (["--host", "::", "--port", "8000"], "http://[::1]:8000/health"),
        (["--host", "10.1.2.3", "--port", "8000"], "http://10.1.2.3:8000/health"),
        ([], "http://127.0.0.1:8000/health"),
    ],
)
def test_the_url_follows_the_arguments(
    probe: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    no_settings: None,
    arguments: list[str],
    url: str,
) -> None:
    monkeypatch.setattr(probe, "serve_arguments", lambda: arguments)
    assert probe.health_url() == url


def test_without_a_serve_process_it_falls_back_to_the_settings(
    probe: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probe, "serve_arguments", lambda: None)
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.setenv("HOST_BIND_IP", "127.0.0.2")
    assert probe.health_url() == "http://127.0.0.2:8123/health"


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_healthy_on_the_given_port_unhealthy_elsewhere(
    probe: ModuleType, monkeypatch: pytest.MonkeyPatch, no_settings: None, server: int
) -> None:
    monkeypatch.setattr(
        probe, "serve_arguments", lambda: ["--host", "0.0.0.0", "--port", str(server)]
    )
    assert probe.main() == 0
    with ThreadingHTTPServer(("127.0.0.1", 0), _Health) as unused:
        closed = unused.server_address[1]
    monkeypatch.setattr(probe, "serve_arguments", lambda: ["--port", str(closed)])
    assert probe.main() == 1
