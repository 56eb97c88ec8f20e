"""Every error type has its own HTTP status and CLI exit code: none falls through to a default."""

from __future__ import annotations

import pytest

from llmserve import errors
from llmserve.api.errors import STATUS, status_for
from llmserve.cli._run import EXIT_CODES, exit_code_for


@pytest.mark.parametrize("error_type", errors.all_error_types(), ids=lambda t: t.__name__)
def test_every_error_type_is_mapped_explicitly(error_type: type[errors.LlmserveError]) -> None:
    assert error_type in STATUS, f"{error_type.__name__} has no HTTP status"
    assert error_type in EXIT_CODES, f"{error_type.__name__} has no exit code"


def test_every_error_type_has_its_own_code() -> None:
    codes = [t.code for t in errors.all_error_types()]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.PromptTooLargeError("x"), 413),
        (errors.ModelNotFoundError("x"), 404),
        (errors.ModelProtectedError("x"), 403),
        (errors.ModelInUseError("x"), 409),
        (errors.BackendUnavailableError("x"), 503),
        (errors.BackendBusyError("x"), 503),
        (errors.BackendError("x"), 502),
        (errors.BackendTimeoutError("x"), 504),
        (errors.OverloadedError("x"), 429),
        (errors.NotSupportedError("x"), 501),
    ],
)
def test_spec_statuses(error: errors.LlmserveError, status: int) -> None:
    assert status_for(error) == status
    assert exit_code_for(error) != 0
