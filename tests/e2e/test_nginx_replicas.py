"""Two ``llmserve serve`` replicas behind a real nginx (Debian's), configured by
``docker/nginx.conf`` itself: only its upstream addresses, port and scratch paths are changed
for loopback. Plus the compose "scale" profile that runs the same thing in Docker.

* tokens go through nginx one by one (no buffering): the first token reaches the client while
  the Ollama double is still generating;
* a replica stopped with SIGTERM finishes its stream while nginx sends new requests to the other;
* a model switched through one replica is honoured by both.
"""

from __future__ import annotations

import itertools
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import yaml

from tests._server import ServerProcess, free_port, running_server
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.faults._tools import server_env

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_conf(upstreams: list[str], port: int, scratch: Path) -> str:
    """``docker/nginx.conf`` for loopback: the replicas at ``upstreams``, listening on
    ``port``, its pid and temporary files in ``scratch``."""
    text = (ROOT / "docker" / "nginx.conf").read_text()
    servers = re.findall(r"^ *server api(?:-replica)?:8000 [^;]*;\n", text, flags=re.MULTILINE)
    assert len(servers) == 2, "the upstream block lists api and api-replica"
    options = servers[0].split("8000", 1)[1]
    text = text.replace(servers[1], "").replace(
        servers[0], "".join(f"        server {address}{options}" for address in upstreams)
    )
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    return text.replace("/tmp/", f"{scratch}/")


class Nginx:
    def __init__(self, conf: Path, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(conf.parent), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(self.base_url + "/health", timeout=1)
                return
            except httpx.HTTPError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {self.process.stderr}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def stack(
    database_url: str, ollama_server: OllamaDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Nginx, list[ServerProcess]]]:
    if not Path(NGINX).exists():
        pytest.fail("these tests run Debian's nginx: apt-get install nginx-light")
    scratch = tmp_path_factory.mktemp("nginx")
    env = server_env(database_url, ollama_server.base_url, SHUTDOWN_GRACE_S=20)
    with ExitStack() as stack:
        replicas = [stack.enter_context(running_server(env, scratch)) for _ in range(2)]
        port = free_port()
        conf = scratch / "nginx.conf"
        upstreams = [replica.base_url.removeprefix("http://") for replica in replicas]
        conf.write_text(nginx_conf(upstreams, port, scratch))
        proxy = Nginx(conf, port)
        stack.callback(proxy.stop)
        yield proxy, replicas


def test_tokens_go_through_nginx_one_by_one(
    stack: tuple[Nginx, list[ServerProcess]], ollama: OllamaDouble
) -> None:
    proxy, replicas = stack
    report = []
    for name, url in (("direct", replicas[0].base_url), ("nginx", proxy.base_url)):
        ollama.enqueue(Script(tokens=[f"t{i} " for i in range(5)], delay_s=0.2))
        seen_unfinished = []
        body = {"prompt": "hi", "stream": True}
        started = time.monotonic()
        with httpx.stream("POST", url + "/api/v1/generate", json=body, timeout=60) as response:
            assert response.status_code == 200
            # nginx reads (and drops) llmserve's X-Accel-Buffering: no; proxy_buffering is off too
            assert response.headers.get("x-accel-buffering") == ("no" if name == "direct" else None)
            times = []
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: {}":
                    times.append(time.monotonic() - started)
                    # The double has not sent its last token yet: nothing waited in a buffer.
                    seen_unfinished.append(not ollama.generations[-1].finished)
        assert len(times) == 5 and seen_unfinished[0] and seen_unfinished[-2]
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
        report.append(f"{name}: first token {times[0]:.3f} s, gaps {gaps}")
    print("\n" + "\n".join(report))


def test_x_request_id_passes_through(stack: tuple[Nginx, list[ServerProcess]]) -> None:
    proxy, _ = stack
    response = httpx.get(proxy.base_url + "/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert httpx.get(proxy.base_url + "/health").headers["x-request-id"]


def test_a_switch_through_one_replica_is_honoured_by_both(
    stack: tuple[Nginx, list[ServerProcess]], ollama: OllamaDouble, db_url: str
) -> None:
    proxy, (first, second) = stack
    response = httpx.post(first.base_url + "/api/v1/models/switch/qwen2.5:0.5b", timeout=10)
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 10
    while httpx.get(second.base_url + "/api/v1/models/active").json()["model"] != "qwen2.5:0.5b":
        assert time.monotonic() < deadline, "the other replica did not follow the switch"
        time.sleep(0.05)
    before = len(ollama.generations)
    for _ in range(4):
        response = httpx.post(proxy.base_url + "/api/v1/generate", json={"prompt": "x"})
        assert response.status_code == 200
    assert {record.model for record in ollama.generations[before:]} == {"qwen2.5:0.5b"}
    httpx.post(first.base_url + "/api/v1/models/switch/llama3.2", timeout=10)


def test_a_replica_stopped_with_sigterm_drains_while_nginx_uses_the_other(
    stack: tuple[Nginx, list[ServerProcess]], ollama: OllamaDouble
) -> None:
    """Runs last in the module: it stops a replica."""
    proxy, replicas = stack
    ollama.enqueue(Script(tokens=[f"t{i} " for i in range(15)], delay_s=0.1))
    body = {"prompt": "long", "stream": True}
    with httpx.stream("POST", proxy.base_url + "/api/v1/generate", json=body, timeout=60) as long:
        assert long.status_code == 200
        lines = long.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        busy = next(r for r in replicas if _in_flight(r) == 1)
        idle = next(r for r in replicas if r is not busy)
        busy.process.send_signal(signal.SIGTERM)
        # While it drains, new requests through nginx are served (by the other replica).
        for _ in range(4):
            response = httpx.post(proxy.base_url + "/api/v1/generate", json={"prompt": "x"})
            assert response.status_code == 200, response.text
        rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert first != "data: {}" and len(rest) == 15 and rest[-1] == "{}"
    assert busy.process.wait(20) == 0
    assert _in_flight(idle) == 0


def _in_flight(replica: ServerProcess) -> int:
    text = httpx.get(replica.base_url + "/metrics", timeout=5).text
    found = re.search(r"^llmserve_generations_in_flight (\S+)$", text, flags=re.MULTILINE)
    assert found is not None
    return int(float(found.group(1)))


def test_the_compose_scale_profile() -> None:
    """Replicas without a published port behind nginx; the base api service unchanged."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    api, replica, nginx = services["api"], services["api-replica"], services["nginx"]
    assert "profiles" not in api and api["ports"] == ["${HOST_BIND_IP:-127.0.0.1}:8000:8000"]
    assert replica["profiles"] == nginx["profiles"] == ["scale"]
    assert "ports" not in replica
    for key in ("build", "environment", "env_file", "depends_on", "healthcheck"):
        assert replica[key] == api[key], key
    assert nginx["volumes"] == ["./docker/nginx.conf:/etc/nginx/nginx.conf:ro"]
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    assert "proxy_buffering off;" in conf and "X-Request-ID $http_x_request_id" in conf
    makefile = (ROOT / "Makefile").read_text()
    assert "up-scale:" in makefile and "N ?= 2" in makefile
