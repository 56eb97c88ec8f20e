"""Failover over three Ollama doubles: a server killed mid-run, a server coming back, a model
that only a failing server has, and model operations on every server or on one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from tests._server import ServerProcess
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.faults._tools import rows
from tests.multi_backend.conftest import (
    StreamOutcome,
    backend_states,
    run_streams,
    stream_generate,
    wait_until,
)


def test_a_server_killed_mid_run_loses_no_request_that_had_not_started_streaming(
    trio: list[OllamaDouble], start_server: Callable[..., ServerProcess], db_url: str
) -> None:
    _, victim, _ = trio
    for double in trio:
        double.default_script = Script(tokens=[f"t{i} " for i in range(20)], delay_s=0.05)
    server = start_server(MAX_CONCURRENT_GENERATIONS=16)

    async def main() -> tuple[list[StreamOutcome], float]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as c:
            early = [asyncio.create_task(stream_generate(c)) for _ in range(15)]
            await asyncio.sleep(0.5)  # every early stream is streaming now
            killed_at = time.monotonic()
            await asyncio.to_thread(victim.set_down, True)
            late = [asyncio.create_task(stream_generate(c)) for _ in range(15)]
            while await _in_rotation(c, victim.base_url):  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.02)
            out_after = time.monotonic() - killed_at
            return list(await asyncio.gather(*early, *late)), out_after

    outcomes, out_of_rotation = asyncio.run(main())
    assert all(o.status == 200 for o in outcomes), [o.error for o in outcomes if o.status != 200]
    cut = [o for o in outcomes if not o.done]
    # Streams on the killed server end with an error event, after their first tokens; every
    # request that had not started streaming was served elsewhere.
    assert cut, "the killed server had streams"
    assert all(o.error is not None and o.tokens for o in cut)
    assert all(o.error["code"] == "backend_stream_error" for o in cut if o.error)
    assert all(o.done and len(o.tokens) == 20 for o in outcomes[15:])
    logged = rows(db_url, 30)
    assert sorted(row.status for row in logged).count("error") == len(cut)
    assert len(logged) == 30
    # After the kill, nothing more reaches it (the late requests went elsewhere).
    started_on_victim = len(victim.generations)
    run_streams(server.base_url, 6)
    assert len(victim.generations) == started_on_victim
    states = backend_states(server.base_url)
    assert states[victim.base_url]["in_flight"] == 0 and states[victim.base_url]["errors"]
    print(f"\nkilled server out of rotation (seen in /ready) within {out_of_rotation:.2f} s")

    # It comes back: the next probe puts it back in rotation.
    back_at = time.monotonic()
    victim.set_down(False)
    wait_until(lambda: backend_states(server.base_url)[victim.base_url]["status"] == "ok")
    back_after = time.monotonic() - back_at
    outcomes = run_streams(server.base_url, 12)
    assert all(o.done for o in outcomes)
    assert len(victim.generations) > started_on_victim
    print(f"restarted server back in rotation after {back_after:.2f} s")


async def _in_rotation(client: httpx.AsyncClient, url: str) -> bool:
    return bool((await client.get("/ready")).json()["backends"][url]["status"] == "ok")


def test_all_servers_down_is_503_and_a_model_only_on_a_failing_server_cannot_be_switched_to(
    trio: list[OllamaDouble], start_server: Callable[..., ServerProcess]
) -> None:
    first, second, third = trio
    first.add_model("only-here:1b")
    server = start_server()
    first.set_down(True)
    wait_until(lambda: backend_states(server.base_url)[first.base_url]["status"] != "ok")
    response = httpx.post(server.base_url + "/api/v1/models/switch/only-here:1b", timeout=10)
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert "only-here:1b" in response.json()["detail"]
    ready = httpx.get(server.base_url + "/ready", timeout=10)
    assert ready.status_code == 200  # two servers still serve the active model
    assert ready.json()["backends"][first.base_url]["status"].startswith("unavailable")
    second.set_down(True)
    third.set_down(True)
    response = httpx.post(server.base_url + "/api/v1/generate", json={"prompt": "x"}, timeout=10)
    assert response.status_code == 503 and response.headers["retry-after"]
    assert httpx.get(server.base_url + "/ready", timeout=10).status_code == 503


def test_pull_and_delete_on_every_server_or_on_one(
    trio: list[OllamaDouble], start_server: Callable[..., ServerProcess]
) -> None:
    first, second, third = trio
    for double in trio:
        double.add_registry_model("new:1b")
    server = start_server()
    url = server.base_url + "/api/v1/models"
    one = {"server": second.base_url}
    response = httpx.post(url + "/pull", params=one, json={"name": "new:1b"}, timeout=30)
    assert response.status_code == 200, response.text
    assert ["new:1b" in d.models for d in trio] == [False, True, False]
    listed = {m["name"]: m["backends"] for m in httpx.get(url, timeout=10).json()["models"]}
    assert listed["new:1b"] == [second.base_url]
    response = httpx.post(url + "/pull", json={"name": "new:1b"}, timeout=30)
    assert response.status_code == 200, response.text
    assert all("new:1b" in d.models for d in trio)
    response = httpx.delete(url + "/new:1b", params={"server": third.base_url}, timeout=10)
    assert response.status_code == 200, response.text
    assert ["new:1b" in d.models for d in trio] == [True, True, False]
    response = httpx.delete(url + "/new:1b", timeout=10)
    assert response.status_code == 200, response.text
    assert not any("new:1b" in d.models for d in trio)
    unknown = httpx.delete(url + "/new:1b", params={"server": "http://127.0.0.1:9"}, timeout=10)
    assert unknown.status_code == 400 and "http://127.0.0.1:9" in unknown.json()["detail"]
    built_in = httpx.delete(url + "/llama3.2", params={"server": first.base_url}, timeout=10)
    assert built_in.status_code == 403
    assert all("llama3.2:latest" in d.models for d in trio)
