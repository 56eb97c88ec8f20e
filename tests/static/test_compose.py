"""The compose files keep the README's promises (read with PyYAML, no Docker needed)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.static._files import ROOT


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return _load("docker-compose.yml")["services"]


@pytest.fixture(scope="module")
def dev_services() -> dict[str, Any]:
    return _load("docker-compose.dev.yml")["services"]


def _test_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def test_the_three_services(services):
    # Besides the replicas and nginx of the "scale" profile (tests/e2e/test_nginx_replicas.py).
    assert {name for name, s in services.items() if "profiles" not in s} == {"api", "db", "ollama"}


def test_api_is_published_on_host_bind_ip_port_8000_only(services):
    assert services["api"]["ports"] == ["${HOST_BIND_IP:-127.0.0.1}:8000:8000"]


def test_db_and_ollama_publish_no_ports(services):
    for name in ("db", "ollama"):
        assert "ports" not in services[name], f"{name} publishes a port"


def test_api_build_env_and_wiring(services):
    api = services["api"]
    assert api["build"] == {"context": ".", "dockerfile": "docker/api.Dockerfile"}
    assert api["env_file"] == ".env"
    environment = api["environment"]
    assert environment["OLLAMA_BASE_URL"] == "http://ollama:11434"
    assert environment["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@db:5432/" in environment["DATABASE_URL"]


def test_api_waits_for_healthy_db_and_ollama(services):
    assert services["api"]["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "ollama": {"condition": "service_healthy"},
    }


def test_every_service_has_a_healthcheck_and_a_restart_policy(services):
    assert "pg_isready" in _test_command(services["db"])
    assert "ollama list" in _test_command(services["ollama"])
    # The image's probe (docker/healthcheck.py asks /health on the port serve was given).
    assert services["api"]["healthcheck"]["test"] == ["CMD", "python", "/app/docker/healthcheck.py"]
    for name, service in services.items():
        assert service.get("restart") in {"unless-stopped", "always"}, name


def test_db_is_postgres_16_alpine_with_a_named_volume(services):
    db = services["db"]
    assert db["image"] == "postgres:16-alpine"
    (volume,) = db["volumes"]
    source, target = volume.split(":")[:2]
    assert target == "/var/lib/postgresql/data"
    assert source in _load("docker-compose.yml")["volumes"], "not a named volume"
    assert set(db["environment"]) >= {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}


def test_ollama_gets_the_gpu(services):
    devices = services["ollama"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_ollama_is_built_with_the_model_and_nothing_hides_it(services):
    ollama = services["ollama"]
    assert ollama["build"]["dockerfile"] == "docker/ollama.Dockerfile"
    assert "${BUILT_IN_OLLAMA_MODEL" in ollama["build"]["args"]["BUILT_IN_OLLAMA_MODEL"]
    # A volume on /root/.ollama would hide (bind mount) or freeze (named volume) the baked model.
    assert not any("/root/.ollama" in str(volume) for volume in ollama.get("volumes", []))
    # The base image's ENTRYPOINT /bin/ollama must stay: a `command: sh -c` would go to ollama.
    assert "entrypoint" not in ollama and "command" not in ollama


def test_dev_override_mounts_the_source_and_reloads(dev_services):
    assert set(dev_services) == {"api"}
    api = dev_services["api"]
    assert "--reload" in api["command"]
    mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in api["volumes"]}
    assert mounts["./llmserve"] == "/app/llmserve"
    assert mounts["./migrations"] == "/app/migrations"
    assert "ports" not in api, "the dev override must not change the published ports"
