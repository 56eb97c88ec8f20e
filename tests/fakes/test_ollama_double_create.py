"""The double's ``/api/create`` behaves like Ollama's, proven over real HTTP with httpx."""

from __future__ import annotations

import hashlib
import re
import time

import httpx
import pytest

from tests.fakes.double_testing import BUILT_IN, JSON_UTF8, lines
from tests.fakes.ollama_double import OllamaDouble

LAYER = re.compile(r"(using existing|creating new) layer sha256:[0-9a-f]{64}")


def create(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/api/create", json={"model": "mario", "from": BUILT_IN, **body})


def test_create_from_an_installed_model_streams_layers_and_installs(
    client: httpx.Client, double: OllamaDouble
) -> None:
    response = create(client, system="You are Mario.", template="{{ .Prompt }}!")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    statuses = [line["status"] for line in lines(response)]
    assert statuses[-2:] == ["writing manifest", "success"]
    layers = statuses[:-2]
    assert all(LAYER.fullmatch(status) for status in layers)
    # the base's weights and params, then the new template and system layers
    assert [s.split(" layer")[0] for s in layers] == ["using existing"] * 2 + ["creating new"] * 2
    system_digest = hashlib.sha256(b"You are Mario.").hexdigest()
    assert layers[-1] == f"creating new layer sha256:{system_digest}"
    assert double.models[0] == "mario:latest"  # the newest
    shown = client.post("/api/show", json={"model": "mario"}).json()
    assert (shown["system"], shown["template"]) == ("You are Mario.", "{{ .Prompt }}!")
    assert shown["details"] == client.post("/api/show", json={"model": BUILT_IN}).json()["details"]
    record = double.creates[-1]
    assert (record.model, record.stream, record.finished) == ("mario", True, True)
    assert record.statuses == statuses
    assert record.request["system"] == "You are Mario."


def test_the_same_content_twice_reuses_its_layer(client: httpx.Client) -> None:
    create(client, system="Be brief.")
    again = [line["status"] for line in lines(create(client, model="luigi", system="Be brief."))]
    assert not any(status.startswith("creating new") for status in again)


def test_parameters_replace_the_base_params_layer(client: httpx.Client) -> None:
    statuses = [line["status"] for line in lines(create(client, parameters={"num_ctx": 8192}))]
    assert [s.split(" layer")[0] for s in statuses[:-2]] == ["using existing", "creating new"]


def test_stream_false_answers_the_last_object(client: httpx.Client, double: OllamaDouble) -> None:
    response = create(client, stream=False, name="peach", model=None)
    assert (response.status_code, response.json()) == (200, {"status": "success"})
    assert response.headers["content-type"] == "application/json"
    assert "peach:latest" in double.models


def test_create_replaces_a_model_of_the_same_name(
    client: httpx.Client, double: OllamaDouble
) -> None:
    create(client, system="one")
    create(client, model="MARIO", system="two")
    assert double.models.count("mario:latest") == 1
    assert client.post("/api/show", json={"model": "mario"}).json()["system"] == "two"


def test_from_a_registry_model_pulls_it_first(client: httpx.Client, double: OllamaDouble) -> None:
    double.add_registry_model("mistral:7b")
    statuses = [line["status"] for line in lines(create(client, **{"from": "mistral:7b"}))]
    assert statuses[0] == "pulling manifest"
    pulled = statuses.index("success")  # the pull's own end comes first
    assert statuses[pulled - 2 : pulled] == ["verifying sha256 digest", "writing manifest"]
    assert statuses[-2:] == ["writing manifest", "success"] and pulled < len(statuses) - 1
    assert {"mistral:7b", "mario:latest"} <= set(double.models)


def test_from_a_model_nobody_has(client: httpx.Client, double: OllamaDouble) -> None:
    streamed = create(client, **{"from": "nosuch"})
    assert streamed.status_code == 200
    assert lines(streamed) == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    whole = create(client, stream=False, **{"from": "nosuch"})
    assert (whole.status_code, whole.json()) == (
        500,
        {"error": "pull model manifest: file does not exist"},
    )
    assert "mario:latest" not in double.models
    assert double.creates[-1].error == "pull model manifest: file does not exist"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "a b", "from": BUILT_IN}, 400, "invalid model name"),
        ({"from": BUILT_IN}, 400, "invalid model name"),
        ({"model": "m"}, 400, "neither 'from' or 'files' was specified"),
        ({"model": "m", "from": "bad name"}, 400, "invalid model name"),
        ({"model": "m", "files": {"../x.gguf": "sha256:" + "0" * 64}}, 400, None),
        ({"model": "m", "files": {"x.gguf": ""}}, 400, "invalid digest format"),
        ({"model": "m", "files": {}}, 400, "unknown type"),
        ({"model": "m", "from": BUILT_IN, "quantize": "q8_0"}, 500, None),
        ({"model": "m", "system": 5, "from": BUILT_IN}, 400, None),
    ],
)
def test_refusals_before_the_stream(
    client: httpx.Client, double: OllamaDouble, body: dict, status: int, message: str | None
) -> None:
    response = client.post("/api/create", json=body)
    assert response.status_code == status
    assert list(response.json()) == ["error"]
    if message is not None:
        assert response.json()["error"] == message
    assert "m:latest" not in double.models


def test_refusal_texts(client: httpx.Client) -> None:
    bad_path = client.post("/api/create", json={"model": "m", "files": {"/abs.gguf": "x"}})
    assert bad_path.json() == {"error": "file path must be relative"}
    assert bad_path.headers["content-type"] == JSON_UTF8
    typed = client.post("/api/create", json={"model": "m", "system": 5})
    assert typed.json()["error"] == (
        "json: cannot unmarshal number into Go struct field CreateRequest.system of type string"
    )
    quantized = client.post("/api/create", json={"model": "m", "from": BUILT_IN, "quantize": "q8"})
    assert quantized.json() == {
        "error": "quantization is only supported for F16, BF16 and F32 models"
    }
    assert quantized.headers["content-type"] == "application/json"
    assert client.post("/api/create", content=b"").json() == {"error": "missing request body"}


def test_quantizing_an_unquantized_model(client: httpx.Client, double: OllamaDouble) -> None:
    double.add_model("big:f16", quantization_level="F16")
    response = create(client, quantize="q4_K_M", **{"from": "big:f16"})
    events = lines(response)
    assert events[0]["status"] == "quantizing F16 model to Q4_K_M"
    assert "completed" not in events[0] and events[2]["completed"] == events[2]["total"]
    assert events[3] == {"status": "verifying conversion"}
    shown = client.post("/api/show", json={"model": "mario"}).json()
    assert shown["details"]["quantization_level"] == "Q4_K_M"


def test_a_gguf_file_fails_for_want_of_its_blob(client: httpx.Client) -> None:
    digest = "a" * 64
    response = client.post(
        "/api/create", json={"model": "m", "files": {"model.gguf": f"sha256:{digest}"}}
    )
    assert response.status_code == 200
    assert lines(response) == [
        {"status": "parsing GGUF"},
        {"error": f"open /root/.ollama/models/blobs/sha256-{digest}: no such file or directory"},
    ]


def test_leaving_mid_create_cancels_it_without_installing(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.pull_delay_s = 0.05
    with client.stream("POST", "/api/create", json={"model": "m", "from": BUILT_IN}) as response:
        next(response.iter_lines())
    deadline = time.monotonic() + 2
    while not double.creates[-1].cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    record = double.creates[-1]
    assert record.cancelled and not record.finished
    time.sleep(0.3)  # the whole create would be over by now
    assert "m:latest" not in double.models


def test_reset_forgets_creates_and_layers(client: httpx.Client, double: OllamaDouble) -> None:
    create(client, system="Be brief.")
    double.reset()
    assert double.creates == []
    statuses = [line["status"] for line in lines(create(client, model="x", system="Be brief."))]
    assert any(status.startswith("creating new") for status in statuses)
