"""Parsing one read's NDJSON lines at once (``backends.ollama._parse_lines``)."""

from __future__ import annotations

from llmserve import errors
from llmserve.backends.ollama import _parse_lines


def test_a_burst_is_parsed_in_order_and_blank_lines_are_skipped() -> None:
    lines = [b'{"response":"a","done":false}', b"", b'{"response":"b","done":true}']
    objects, failure = _parse_lines(lines)
    assert failure is None
    assert [obj["response"] for obj in objects] == ["a", "b"]


def test_the_objects_before_a_malformed_line_are_kept_with_the_error() -> None:
    lines = [b'{"response":"a"}', b'{"response": "b"', b'{"response":"c"}']
    objects, failure = _parse_lines(lines)
    assert [obj["response"] for obj in objects] == ["a"]
    assert isinstance(failure, errors.BackendStreamError)


def test_json_that_is_not_an_object_is_malformed() -> None:
    objects, failure = _parse_lines([b'{"response":"a"}', b"42"])
    assert [obj["response"] for obj in objects] == ["a"]
    assert isinstance(failure, errors.BackendStreamError)
    assert _parse_lines([b"", b""]) == ([], None)


def test_one_line_holding_two_objects_is_malformed() -> None:
    # Joined into one array they would parse as three objects; it is two lines, one malformed.
    objects, failure = _parse_lines([b'{"response":"a"}', b'{"response":"b"},{"response":"c"}'])
    assert [obj["response"] for obj in objects] == ["a"]
    assert isinstance(failure, errors.BackendStreamError)


def test_a_single_line_is_parsed_or_refused_on_its_own() -> None:
    assert _parse_lines([b'{"response":"a"}', b""]) == ([{"response": "a"}], None)
    objects, failure = _parse_lines([b"[1]"])
    assert objects == [] and isinstance(failure, errors.BackendStreamError)
    objects, failure = _parse_lines([b'{"response":"a"},{"response":"b"}'])
    assert objects == [] and isinstance(failure, errors.BackendStreamError)
