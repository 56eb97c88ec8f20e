"""The Ollama double behaves like Ollama, proven over real HTTP with httpx."""

from __future__ import annotations

import itertools
import json
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest

from tests.fakes.double_testing import BUILT_IN, CREATED_AT, JSON_UTF8, METRICS, OTHER, lines
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.fakes.ollama_names import parse_model_name


def generate(client: httpx.Client, timeout: float = 5, **body: Any) -> httpx.Response:
    body = {"model": BUILT_IN, "prompt": "Why?", **body}
    return client.post("/api/generate", json=body, timeout=timeout)


# -- liveness, routing, error shapes -----------------------------------------------------------


def test_root_says_ollama_is_running(client: httpx.Client) -> None:
    for method in ("GET", "HEAD"):
        response = client.request(method, "/")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text == ("Ollama is running" if method == "GET" else "")


def test_version_is_configurable(client: httpx.Client) -> None:
    assert client.get("/api/version").json() == {"version": "0.12.0"}
    assert client.head("/api/version").status_code == 200
    with OllamaDouble.running(version="0.5.7") as other:
        assert client.get(other.base_url + "/api/version").text == '{"version":"0.5.7"}'


def test_unknown_path_and_wrong_method_are_gin_text_pages(client: httpx.Client) -> None:
    missing = client.get("/api/nope")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert missing.headers["content-type"] == "text/plain"
    for method, path in [("GET", "/api/generate"), ("POST", "/api/tags"), ("GET", "/api/delete")]:
        wrong = client.request(method, path)
        assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")
        assert wrong.headers["content-type"] == "text/plain"


def test_errors_are_exactly_one_error_key(client: httpx.Client) -> None:
    response = client.post("/api/generate", json={"model": "nosuch", "prompt": "x"})
    assert response.status_code == 404
    assert response.headers["content-type"] == JSON_UTF8
    assert response.content == b'{"error":"model \'nosuch\' not found"}'


# -- body decoding -------------------------------------------------------------------------------


def test_body_is_json_whatever_the_content_type_and_unknown_fields_are_ignored(
    client: httpx.Client, double: OllamaDouble
) -> None:
    body = json.dumps({"model": BUILT_IN, "prompt": "x", "stream": False, "bogus": [1]})
    response = client.post("/api/generate", content=body, headers={"content-type": "text/plain"})
    assert response.status_code == 200
    assert response.json()["response"] == "Hello, world!"
    # Go's decoder also matches keys case-insensitively and ignores trailing data.
    odd = client.post("/api/generate", content=b'{"MODEL":"llama3.2","Prompt":"x"} trailing')
    assert odd.status_code == 200


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show", "/api/pull"])
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "missing request body"),
        (b"  \n", "missing request body"),
        (b'{"model":', "unexpected EOF"),
        (b"xyz", "invalid character 'x' looking for beginning of value"),
    ],
)
def test_empty_or_malformed_bodies_are_400(
    client: httpx.Client, path: str, body: bytes, message: str
) -> None:
    response = client.post(path, content=body)
    assert response.status_code == 400
    assert response.json() == {"error": message}


def test_wrong_field_types_are_400_with_a_go_decoder_message(client: httpx.Client) -> None:
    cases = [
        ("/api/generate", {"model": BUILT_IN, "prompt": 5}, "GenerateRequest.prompt", "string"),
        ("/api/generate", {"model": BUILT_IN, "stream": "no"}, "GenerateRequest.stream", "bool"),
        (
            "/api/chat",
            {"model": BUILT_IN, "messages": "hi"},
            "ChatRequest.messages",
            "[]api.Message",
        ),
    ]
    for path, body, field, go_type in cases:
        response = client.post(path, json=body)
        assert response.status_code == 400
        kind = "number" if field.endswith("prompt") else "string"
        expected = f"json: cannot unmarshal {kind} into Go struct field {field} of type {go_type}"
        assert response.json() == {"error": expected}
    array = client.post("/api/generate", json=[1])
    assert array.json()["error"] == (
        "json: cannot unmarshal array into Go value of type api.GenerateRequest"
    )


# -- model names -------------------------------------------------------------------------------


def test_generate_model_checks(client: httpx.Client) -> None:
    assert client.post("/api/generate", json={"prompt": "x"}).json() == {
        "error": "model '' not found"
    }
    assert client.post("/api/generate", json={"model": "", "prompt": "x"}).status_code == 404
    invalid = client.post("/api/generate", json={"model": "bad name!", "prompt": "x"})
    assert (invalid.status_code, invalid.json()) == (400, {"error": "invalid model name"})
    missing = client.post("/api/generate", json={"model": "Mistral", "prompt": "x"})
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'Mistral' not found"})


def test_chat_model_checks(client: httpx.Client) -> None:
    messages = [{"role": "user", "content": "hi"}]
    no_model = client.post("/api/chat", json={"messages": messages})
    assert (no_model.status_code, no_model.json()) == (400, {"error": "model is required"})
    invalid = client.post("/api/chat", json={"model": "a//b", "messages": messages})
    assert (invalid.status_code, invalid.json()) == (400, {"error": "invalid model name"})
    missing = client.post("/api/chat", json={"model": "nosuch:7b", "messages": messages})
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'nosuch:7b' not found"})


def test_names_match_ignoring_case_and_latest_and_are_echoed_as_sent(
    client: httpx.Client,
) -> None:
    for spelling in ("llama3.2", "llama3.2:latest", "LLaMA3.2:LATEST", "library/llama3.2"):
        response = client.post("/api/generate", json={"model": spelling, "prompt": "x"})
        assert response.status_code == 200
        assert {line["model"] for line in lines(response)} == {spelling}


@pytest.mark.parametrize(
    ("raw", "display"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("qwen2.5:0.5b", "qwen2.5:0.5b"),
        ("myns/m", "myns/m:latest"),
        ("registry.ollama.ai/library/llama3.2", "llama3.2:latest"),
        ("example.com:5000/ns/m:v1", "example.com:5000/ns/m:v1"),
        ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:Q4_K_M"),
        ("_x/y_z", "_x/y_z:latest"),
    ],
)
def test_valid_names_and_their_display_form(raw: str, display: str) -> None:
    name = parse_model_name(raw)
    assert name is not None and name.display == display


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "m:",
        "/m",
        "a//b",
        "-m",
        ".m",
        "m:-t",
        "a b",
        "m@sha256:00",
        "ns.x/m",
        "a/b/c/d",
        "é",
        "x" * 81,
    ],
)
def test_invalid_names(raw: str) -> None:
    assert parse_model_name(raw) is None


# -- generate: streaming and not -----------------------------------------------------------------


def test_streaming_is_the_default_and_its_objects_look_like_ollamas(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.enqueue(Script(tokens=["The ", "sky"], prompt_eval_count=9))
    response = generate(client)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers.get("transfer-encoding") == "chunked"
    *chunks, final = lines(response)
    assert [c["response"] for c in chunks] == ["The ", "sky"]
    for chunk in chunks:
        assert list(chunk) == ["model", "created_at", "response", "done"]
        assert chunk["done"] is False and CREATED_AT.fullmatch(chunk["created_at"])
    assert final["done"] is True and final["done_reason"] == "stop" and final["response"] == ""
    assert all(isinstance(final[key], int) and final[key] > 0 for key in METRICS)
    assert (final["prompt_eval_count"], final["eval_count"]) == (9, 2)
    assert final["context"] == list(range(1, 12))
    assert final["total_duration"] >= final["eval_duration"]


def test_stream_false_returns_one_object(client: httpx.Client, double: OllamaDouble) -> None:
    double.enqueue(Script(tokens=["a", "b", "c"]))
    response = generate(client, stream=False)
    assert response.headers["content-type"] == JSON_UTF8
    body = response.json()
    assert body["response"] == "abc" and body["done"] is True and body["eval_count"] == 3
    assert set(METRICS) <= set(body) and "context" in body
    # Only an explicit false turns streaming off.
    assert generate(client, stream=None).headers["content-type"] == "application/x-ndjson"


def test_go_style_json_escapes_html_characters(client: httpx.Client, double: OllamaDouble) -> None:
    double.enqueue(Script(tokens=["<b>&é"]))
    response = generate(client)
    assert b'"response":"\\u003cb\\u003e\\u0026\xc3\xa9"' in response.content
    assert response.text.split("\n")[0].startswith('{"model"')


def test_chunks_are_flushed_one_by_one(client: httpx.Client, double: OllamaDouble) -> None:
    double.enqueue(Script(tokens=["a", "b", "c"], delay_s=0.12))
    arrivals = []
    with client.stream("POST", "/api/generate", json={"model": BUILT_IN, "prompt": "x"}) as r:
        for _ in r.iter_lines():
            arrivals.append(time.monotonic())
    assert len(arrivals) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals[:3])]
    assert all(gap > 0.08 for gap in gaps), gaps


def _raw_request(port: int, body: dict[str, Any]) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def test_nothing_is_sent_before_the_first_chunk(double: OllamaDouble) -> None:
    double.enqueue(Script(tokens=["a"], first_token_delay_s=0.4))
    with _raw_request(double.port, {"model": BUILT_IN, "prompt": "x"}) as sock:
        sock.settimeout(0.25)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(2)
        received = sock.recv(4096)
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        while not received.endswith(b"\r\n0\r\n\r\n"):  # the end of the chunked body
            received += sock.recv(4096)
    assert b'"done":true' in received


def test_num_predict_stops_with_done_reason_length(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.enqueue(Script(tokens=list("abcdef")))
    *chunks, final = lines(generate(client, options={"num_predict": 2, "temperature": 0}))
    assert [c["response"] for c in chunks] == ["a", "b"]
    assert (final["done_reason"], final["eval_count"]) == ("length", 2)
    assert double.generations[-1].options == {"num_predict": 2, "temperature": 0}
    double.enqueue(Script(tokens=["a"], done_reason="length"))
    assert lines(generate(client))[-1]["done_reason"] == "length"


def test_thinking_chunks_have_an_empty_response(client: httpx.Client, double: OllamaDouble) -> None:
    double.add_model("qwen3", capabilities=("completion", "thinking"))
    double.enqueue(Script(thinking=["hmm"], tokens=["ok"]))
    response = client.post("/api/generate", json={"model": "qwen3", "prompt": "x", "think": True})
    first, second, _ = lines(response)
    assert (first["response"], first["thinking"]) == ("", "hmm")
    assert second["response"] == "ok" and "thinking" not in second


def test_request_validation_like_ollama(client: httpx.Client) -> None:
    unit = generate(client, keep_alive="300")
    assert unit.json() == {"error": 'time: missing unit in duration "300"'}
    assert generate(client, keep_alive="5m").status_code == 200
    think = generate(client, think=True)
    assert (think.status_code, think.json()) == (
        400,
        {"error": '"llama3.2" does not support thinking'},
    )
    assert generate(client, think="sometimes").status_code == 400
    raw = generate(client, raw=True, system="be brief")
    assert raw.json() == {"error": "raw mode does not support template, system, or context"}
    raw_ok = lines(generate(client, raw=True))
    assert "context" not in raw_ok[-1]
    options = generate(client, options={"num_predict": "many"})
    assert (options.status_code, options.json()) == (
        500,
        {"error": 'option "num_predict" must be of type integer'},
    )


# -- load and unload ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False, None])
def test_empty_prompt_loads_and_keep_alive_zero_unloads(
    client: httpx.Client, double: OllamaDouble, stream: bool | None
) -> None:
    load = client.post("/api/generate", json={"model": BUILT_IN, "stream": stream})
    assert load.headers["content-type"] == JSON_UTF8
    body = load.json()
    assert (body["response"], body["done"], body["done_reason"]) == ("", True, "load")
    assert not set(METRICS) & set(body)
    assert client.get("/api/ps").json()["models"][0]["name"] == "llama3.2:latest"
    for keep_alive in (0, "0", "0s"):
        unload = client.post("/api/generate", json={"model": BUILT_IN, "keep_alive": keep_alive})
        assert unload.json()["done_reason"] == "unload"
    assert client.get("/api/ps").json() == {"models": []}
    chat = client.post("/api/chat", json={"model": BUILT_IN, "messages": []}).json()
    assert chat["done_reason"] == "load" and chat["message"] == {"role": "assistant", "content": ""}
    assert double.generations == [] and double.pending_scripts == 0
    assert len([r for r in double.requests if r.path in ("/api/generate", "/api/chat")]) == 5


# -- chat --------------------------------------------------------------------------------------


def test_chat_streams_messages_and_records_the_last_user_prompt(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.enqueue(Script(tokens=["Hi", "!"]))
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    response = client.post("/api/chat", json={"model": BUILT_IN, "messages": messages})
    *chunks, final = lines(response)
    assert [c["message"] for c in chunks] == [
        {"role": "assistant", "content": "Hi"},
        {"role": "assistant", "content": "!"},
    ]
    assert "response" not in chunks[0] and "context" not in final
    assert final["done"] is True and final["message"]["content"] == ""
    record = double.generations[-1]
    assert (record.kind, record.prompt, record.messages) == ("chat", "second", messages)
    whole = client.post(
        "/api/chat", json={"model": BUILT_IN, "messages": messages, "stream": False}
    )
    assert whole.json()["message"] == {"role": "assistant", "content": "Hello, world!"}


# -- scripted failures -----------------------------------------------------------------------


def test_status_script_fails_before_the_stream(client: httpx.Client, double: OllamaDouble) -> None:
    double.enqueue(
        Script(
            status=503, error="server busy, please try again.  maximum pending requests exceeded"
        )
    )
    response = generate(client)
    assert response.status_code == 503
    assert response.headers["content-type"] == JSON_UTF8
    assert response.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }
    assert double.generations[-1].status == 503


def test_error_after_streaming_began_is_a_last_error_line(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.enqueue(Script(tokens=list("abcd"), error_after=2, error="runner crashed"))
    response = generate(client)
    assert response.status_code == 200
    parsed = lines(response)
    assert [p.get("response") for p in parsed[:2]] == ["a", "b"]
    assert parsed[2:] == [{"error": "runner crashed"}]
    assert not any(p.get("done") for p in parsed)
    record = double.generations[-1]
    assert (record.tokens_sent, record.finished, record.error) == (2, False, "runner crashed")


def test_error_before_any_chunk_or_without_streaming_is_a_500(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.enqueue(Script(error_after=1, error="boom"), Script(error_after=0, error="early"))
    whole = generate(client, stream=False)
    assert (whole.status_code, whole.json()) == (500, {"error": "boom"})
    early = generate(client)
    assert (early.status_code, early.json()) == (500, {"error": "early"})
    assert early.headers["content-type"] == "application/json"


def test_cut_after_closes_the_stream_abruptly(client: httpx.Client, double: OllamaDouble) -> None:
    double.enqueue(Script(tokens=list("abc"), cut_after=1))
    received = []
    body = {"model": BUILT_IN, "prompt": "x"}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/api/generate", json=body) as r,
    ):
        for line in r.iter_lines():
            received.append(json.loads(line))
    assert [item["response"] for item in received] == ["a"]
    record = double.generations[-1]
    assert (record.aborted, record.cancelled, record.finished) == (True, False, False)
    double.enqueue(Script(cut_after=0))
    with pytest.raises(httpx.RemoteProtocolError):
        generate(client, stream=False)
    assert generate(client).status_code == 200  # the double keeps serving


# -- cancellation ------------------------------------------------------------------------------


def test_closing_a_stream_is_recorded_as_a_cancellation(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.enqueue(Script(tokens=[f"t{i} " for i in range(100)], delay_s=0.05))
    with client.stream("POST", "/api/generate", json={"model": BUILT_IN, "prompt": "x"}) as r:
        stream = r.iter_lines()
        next(stream), next(stream)
    record = double.wait_for_cancel(timeout=2.0)
    assert record.cancelled and not record.finished
    assert 2 <= record.tokens_sent < 10
    with pytest.raises(TimeoutError):
        double.wait_for_cancel(timeout=0.05)  # each cancellation is returned once


def test_leaving_a_hanging_request_is_a_cancellation(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.enqueue(Script(hang=True))
    with pytest.raises(httpx.ReadTimeout):
        generate(client, timeout=0.2)
    record = double.wait_for_cancel(timeout=2.0)
    assert record.cancelled and record.tokens_sent == 0


def test_leaving_during_the_first_token_delay_is_a_cancellation(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.enqueue(Script(first_token_delay_s=5))
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        generate(client, timeout=0.2)
    assert double.wait_for_cancel(timeout=2.0).tokens_sent == 0
    assert time.monotonic() - started < 2


def test_leaving_a_non_streamed_generation_is_a_cancellation(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.enqueue(Script(tokens=["x"] * 200, delay_s=0.01))
    body = {"model": BUILT_IN, "stream": False, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(httpx.ReadTimeout):
        client.post("/api/chat", json=body, timeout=0.3)
    record = double.wait_for_cancel(timeout=2.0)
    assert 0 < record.tokens_sent < 200


def test_wait_for_cancel_times_out(double: OllamaDouble) -> None:
    with pytest.raises(TimeoutError):
        double.wait_for_cancel(timeout=0.05)


# -- scripts and records -----------------------------------------------------------------------


def test_scripts_are_fifo_then_the_default(client: httpx.Client, double: OllamaDouble) -> None:
    double.enqueue(Script(tokens=["one"]), Script(tokens=["two"]))
    double.default_script = Script(tokens=["default"])
    texts = [generate(client, stream=False).json()["response"] for _ in range(4)]
    assert texts == ["one", "two", "default", "default"]
    double.reset()
    assert generate(client, stream=False).json()["response"] == "Hello, world!"


def test_requests_are_recorded(client: httpx.Client, double: OllamaDouble) -> None:
    generate(client, options={"seed": 1}, stream=False)
    client.get("/nowhere", headers={"X-Trace": "abc"})
    first, second = double.requests
    assert (first.method, first.path, first.json["options"]) == (
        "POST",
        "/api/generate",
        {"seed": 1},
    )
    assert json.loads(first.body) == first.json
    assert (second.path, second.json, second.body) == ("/nowhere", None, b"")
    assert second.headers["x-trace"] == "abc"
    (record,) = double.generations
    assert (record.model, record.prompt, record.finished, record.tokens_sent) == (
        BUILT_IN,
        "Why?",
        True,
        4,
    )


# -- model management --------------------------------------------------------------------------


def test_tags_lists_newest_first_with_ollamas_fields(
    client: httpx.Client, double: OllamaDouble
) -> None:
    for name in double.models:
        double.remove_model(name)
    assert client.get("/api/tags").content == b'{"models":[]}'
    double.add_model("old", modified_at="2024-01-01T00:00:00.123456789Z")
    double.add_model("new:1b", size=123, modified_at="2024-06-01T10:00:00+02:00")
    double.add_model("mid", modified_at="2024-03-01T00:00:00Z")
    models = client.get("/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["new:1b", "mid:latest", "old:latest"]
    assert double.models == ["new:1b", "mid:latest", "old:latest"]
    item = models[0]
    assert list(item) == ["name", "model", "modified_at", "size", "digest", "details"]
    assert (item["model"], item["size"]) == ("new:1b", 123)
    assert re.fullmatch(r"[0-9a-f]{64}", item["digest"])
    assert item["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "new",
        "families": ["new"],
        "parameter_size": "1B",
        "quantization_level": "Q4_K_M",
    }
    assert client.head("/api/tags").status_code == 200


def test_ps_lists_loaded_models(client: httpx.Client) -> None:
    assert client.get("/api/ps").json() == {"models": []}
    generate(client, stream=False)
    (item,) = client.get("/api/ps").json()["models"]
    assert item["name"] == "llama3.2:latest"
    assert {"model", "size", "size_vram", "digest", "details", "expires_at"} <= set(item)
    assert CREATED_AT.fullmatch(item["expires_at"])


def test_show(client: httpx.Client) -> None:
    assert client.post("/api/show", json={}).json() == {"error": "model is required"}
    missing = client.post("/api/show", json={"model": "nosuch"})
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'nosuch' not found"})
    shown = client.post("/api/show", json={"name": "LLAMA3.2"})
    assert shown.status_code == 200
    body = shown.json()
    assert body["capabilities"] == ["completion", "tools"]
    assert body["details"]["family"] == "llama"
    assert {"modelfile", "parameters", "template", "model_info"} <= set(body)


def test_pull_streams_progress_and_installs(client: httpx.Client, double: OllamaDouble) -> None:
    double.add_registry_model("mistral:7b", size=5_000)
    assert double.registry == {"mistral:7b"}
    response = client.post("/api/pull", json={"model": "mistral:7b"})
    assert response.headers["content-type"] == "application/x-ndjson"
    events = lines(response)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [e for e in events if "digest" in e]
    assert len({e["digest"] for e in layers}) == 2
    for event in layers:
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", event["digest"])
        assert event["status"] == "pulling " + event["digest"][7:19]
    assert "completed" not in layers[0] and layers[1]["completed"] > 0
    assert sum({e["digest"]: e["total"] for e in layers}.values()) == 5_000
    assert "mistral:7b" in double.models
    assert double.pulls[-1].finished


def test_pull_without_streaming_and_by_deprecated_name(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.registry = {"phi3"}
    assert double.registry == {"phi3:latest"}
    response = client.post("/api/pull", json={"name": "phi3", "stream": False})
    assert (response.status_code, response.json()) == (200, {"status": "success"})
    assert "phi3:latest" in double.models


def test_pull_of_an_unknown_model(client: httpx.Client, double: OllamaDouble) -> None:
    streamed = client.post("/api/pull", json={"model": "nosuchmodel"})
    assert streamed.status_code == 200
    assert lines(streamed) == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    whole = client.post("/api/pull", json={"model": "nosuchmodel", "stream": False})
    assert whole.status_code == 500
    assert whole.json() == {"error": "pull model manifest: file does not exist"}
    invalid = client.post("/api/pull", json={"model": "bad name"})
    assert (invalid.status_code, invalid.json()) == (400, {"error": "invalid model name"})
    assert "nosuchmodel:latest" not in double.models


def test_leaving_mid_pull_cancels_it_without_installing(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.add_registry_model("mistral:7b")
    double.pull_delay_s = 0.05
    with client.stream("POST", "/api/pull", json={"model": "mistral:7b"}) as response:
        stream = response.iter_lines()
        next(stream), next(stream)
    record = double.wait_for_pull_cancel(timeout=2.0)
    assert record.cancelled and not record.finished
    time.sleep(0.3)  # the whole pull would be over by now
    assert "mistral:7b" not in double.models


def test_delete(client: httpx.Client, double: OllamaDouble) -> None:
    gone = client.request("DELETE", "/api/delete", json={"model": OTHER})
    assert (gone.status_code, gone.content) == (200, b"")
    assert OTHER not in double.models
    again = client.request("DELETE", "/api/delete", json={"name": OTHER})
    assert (again.status_code, again.json()) == (404, {"error": f"model '{OTHER}' not found"})
    assert client.request("DELETE", "/api/delete", json={}).status_code == 400
    invalid = client.request("DELETE", "/api/delete", json={"model": "a b"})
    assert (invalid.status_code, invalid.json()) == (400, {"error": 'name "a b" is invalid'})
    assert client.request("DELETE", "/api/delete", json={"model": "LLAMA3.2"}).status_code == 200
    assert double.models == []


def test_copy(client: httpx.Client, double: OllamaDouble) -> None:
    copied = client.post("/api/copy", json={"source": BUILT_IN, "destination": "mine:v1"})
    assert (copied.status_code, copied.content) == (200, b"")
    assert "mine:v1" in double.models
    missing = client.post("/api/copy", json={"source": "nope", "destination": "x"})
    assert (missing.status_code, missing.json()) == (404, {"error": 'model "nope" not found'})


# -- lifecycle ---------------------------------------------------------------------------------


def test_start_and_stop_are_quick_and_leak_no_threads(http: httpx.Client) -> None:
    before = set(threading.enumerate())
    with OllamaDouble.running(models=[BUILT_IN]) as double:
        socket.create_connection(("127.0.0.1", double.port)).close()  # accepting already
        double.enqueue(Script(hang=True))
        errors: list[BaseException] = []

        def hang() -> None:
            try:
                http.post(
                    double.base_url + "/api/generate",
                    json={"model": BUILT_IN, "prompt": "x"},
                    timeout=10,
                )
            except httpx.HTTPError as exc:
                errors.append(exc)

        waiter = threading.Thread(target=hang)
        waiter.start()
        deadline = time.monotonic() + 2
        while not double.generations and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
    assert time.monotonic() - started < 1.0
    waiter.join(2)
    assert errors and isinstance(errors[0], httpx.RemoteProtocolError)
    (record,) = double.generations
    assert (record.aborted, record.cancelled) == (True, False)
    assert set(threading.enumerate()) == before


def test_usable_from_another_process(double: OllamaDouble) -> None:
    code = (
        "import httpx, sys; print(httpx.get(sys.argv[1] + '/api/tags').json()['models'][0]['name'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, double.base_url], capture_output=True, text=True, timeout=20
    )
    assert result.stdout.strip() == "qwen2.5:0.5b", result.stderr


def test_set_down_refuses_connections_until_it_is_up_again(http: httpx.Client) -> None:
    with OllamaDouble.running(models=[BUILT_IN]) as double:
        url = double.base_url + "/"
        assert http.get(url).status_code == 200  # leaves a pooled keep-alive connection
        double.set_down(True)
        with pytest.raises(httpx.ConnectError):
            http.get(url)
        double.set_down(False)
        assert http.get(url).text == "Ollama is running"


def test_optional_host_check_refuses_foreign_hosts(http: httpx.Client) -> None:
    with OllamaDouble.running(host_check=True) as double:
        url = double.base_url + "/"
        foreign = http.get(url, headers={"Host": "evil.example.com"})
        assert (foreign.status_code, foreign.content) == (403, b"")
        assert http.get(url, headers={"Host": "localhost:11434"}).status_code == 200
        assert http.get(url).status_code == 200
