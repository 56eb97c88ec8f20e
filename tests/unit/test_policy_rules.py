"""The key policy's pure rules: model patterns, budgets, calendar spans."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llmserve import errors
from llmserve.services.keys import Principal
from llmserve.services.policy import (
    KeyPolicy,
    model_matches,
    parse_budget,
    parse_models,
    span_end,
    span_start,
    visible_to,
)


@pytest.mark.parametrize(
    ("pattern", "model", "matches"),
    [
        ("llama3.2", "llama3.2:latest", True),
        ("llama3.2:latest", "llama3.2", True),
        ("LLAMA3.2", "llama3.2:latest", True),
        ("llama3.2", "llama3.2:1b", False),
        ("llama3*", "llama3.2:latest", True),
        ("llama3*", "llama3.2", True),
        ("llama3*", "qwen2.5:0.5b", False),
        ("qwen2.5:*", "qwen2.5:0.5b", True),
        ("*:latest", "llama3.2", True),
        ("myns/*", "myns/coder:7b", True),
        ("gemma*", "gemma-copy", True),  # embedded model names have no tag
    ],
)
def test_model_patterns(pattern: str, model: str, matches: bool) -> None:
    assert model_matches(pattern, model) is matches


def test_no_models_means_every_model_and_no_policy_sees_everything() -> None:
    assert KeyPolicy(rpm=1).allows("anything")
    assert visible_to(None, "anything")
    assert visible_to(Principal(1, "k", False, None), "anything")
    limited = Principal(1, "k", False, KeyPolicy(models=("qwen*",)))
    assert not visible_to(limited, "llama3.2") and visible_to(limited, "qwen2.5:0.5b")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("2000000/month", (2000000, "month")), ("5 / day", (5, "day")), ("1/WEEK", (1, "week"))],
)
def test_budgets(text: str, parsed: tuple[int, str]) -> None:
    assert parse_budget(text) == parsed


@pytest.mark.parametrize("text", ["5/year", "0/day", "-1/day", "month", "5", "1.5/day"])
def test_bad_budgets_name_the_form(text: str) -> None:
    with pytest.raises(errors.InvalidRequestError, match="tokens per day, week or month"):
        parse_budget(text)


def test_models_lists() -> None:
    assert parse_models("llama3*, qwen2.5:0.5b,,") == ("llama3*", "qwen2.5:0.5b")
    assert parse_models(" ") == ()
    with pytest.raises(errors.InvalidRequestError):
        parse_models("a b")


def test_spans_are_calendar_spans_in_utc() -> None:
    now = datetime(2026, 12, 31, 23, 59, 42, 123, tzinfo=UTC)  # a Thursday
    assert span_start("minute", now) == datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert span_end("minute", span_start("minute", now)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert span_start("day", now) == datetime(2026, 12, 31, tzinfo=UTC)
    assert span_start("week", now) == datetime(2026, 12, 28, tzinfo=UTC)  # Monday
    assert span_end("week", span_start("week", now)) == datetime(2027, 1, 4, tzinfo=UTC)
    assert span_start("month", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert span_end("month", span_start("month", now)) == datetime(2027, 1, 1, tzinfo=UTC)
    feb = span_start("month", datetime(2027, 2, 14, tzinfo=UTC))
    assert span_end("month", feb) == datetime(2027, 3, 1, tzinfo=UTC)


def test_describe() -> None:
    policy = KeyPolicy(rpm=10, budget=5, budget_period="day", models=("a*",))
    assert policy.describe() == "rpm 10, budget 5/day, models a*"
    assert KeyPolicy().describe() == "no limits"
