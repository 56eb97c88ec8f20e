"""``Allow`` on a 405 lists exactly the methods of the route the path belongs to, and OPTIONS
answers the same way on every route (no CORS is configured: there is no preflight to answer).

The paths and their methods come from the OpenAPI document, so a new route is covered.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from llmserve import names
from llmserve.errors import InvalidModelNameError
from llmserve.services.keys import KeyService

#: A value for each path parameter: a model name, valid by the name rules.
SAMPLE = "library/llama3.2:latest"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _documented(client: TestClient, headers: dict[str, str] | None) -> dict[str, set[str]]:
    paths: dict[str, Any] = client.get("/openapi.json", headers=headers).json()["paths"]
    return {
        re.sub(r"\{[^}]+\}", SAMPLE, path): {method.upper() for method in operations}
        for path, operations in paths.items()
    }


def _check_every_path(client: TestClient, headers: dict[str, str] | None = None) -> None:
    for path, documented in _documented(client, headers).items():
        for method in sorted(set(METHODS) - documented):
            answer = client.request(method, path, headers=headers)
            assert answer.status_code == 405, (method, path, answer.text)
            allowed = {m.strip() for m in answer.headers["allow"].split(",")}
            assert allowed == documented, (method, path, allowed)
            if method != "HEAD":  # a HEAD answer has no body
                body = answer.json()
                assert "code" in body or "error" in body, body  # the path's own envelope


def test_405_allows_exactly_the_documented_methods_on_every_path(client: TestClient) -> None:
    _check_every_path(client)


def test_options_on_a_path_another_route_also_matches(client: TestClient) -> None:
    """``/api/v1/models/{name:path}`` (DELETE) matches ``switch/0`` too; the path belongs to
    the switch route."""
    answer = client.options("/api/v1/models/switch/0")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert answer.json() == {"detail": "Method Not Allowed", "code": "method_not_allowed"}
    assert client.options("/api/v1/models/llama3.2").headers["allow"] == "DELETE"
    assert client.options("/").headers["allow"] == "GET, HEAD"


def test_with_auth_a_key_comes_first_then_the_same_405(
    make_client: Callable[..., TestClient], keys: KeyService
) -> None:
    secured = make_client(AUTH_REQUIRED=True)
    assert secured.options("/api/v1/models/switch/0").status_code == 401
    admin, _ = keys.create("methods-admin", admin=True, actor="test")
    _check_every_path(secured, {"Authorization": f"Bearer {admin}"})


# -- the model-name pattern the schema declares is the name rules ---------------------------

_PARTS = st.sampled_from(
    ["a", "llama3.2", "Q4_K_M", "hf.co", "x-y", "0", "_", "a.b", "a:b", "", ".a", "-a", "é"]
)
_NAMES = st.lists(_PARTS, min_size=1, max_size=4).flatmap(
    lambda parts: st.tuples(
        st.sampled_from(["", "http://", "https://", "ftp://"]),
        st.sampled_from(["/", ":"]).flatmap(lambda sep: st.just(sep.join(parts))),
        st.sampled_from(["", ":latest", ":", ":a/b", "\n"]),
    ).map("".join)
)


def _parses(name: str) -> bool:
    try:
        names.parse(name)
    except InvalidModelNameError:
        return False
    return True


@settings(max_examples=400, derandomize=True, database=None)
@given(st.one_of(_NAMES, st.text(max_size=30), st.from_regex(names.PATTERN, fullmatch=True)))
def test_the_name_pattern_accepts_exactly_what_the_name_rules_accept(name: str) -> None:
    declared = re.fullmatch(names.PATTERN.removeprefix("^").removesuffix("$"), name) is not None
    declared = declared and len(name) <= names.MAX_LENGTH
    assert declared == _parses(name), name


@pytest.mark.parametrize(
    "name",
    ["llama3.2", "library/llama3.2:latest", "hf.co/org/repo:Q4_K_M", "https://h:1/ns/m:t"],
)
def test_valid_names_match_the_pattern(name: str) -> None:
    assert re.fullmatch(names.PATTERN.removeprefix("^").removesuffix("$"), name)
    assert _parses(name)
