"""The llmserve error tree.

Lower layers (httpx, Ollama's JSON errors, the database) are translated into these types once,
at the boundary where they happen. The API (``api/errors.py``) and the CLI (``cli/_run.py``) map
each type to an HTTP status, an in-stream error event and an exit code; a test fails if a type
is left unmapped.

    LlmserveError                      code
    ├── InvalidRequestError            invalid_request      bad input the schema could not catch
    │   ├── PromptTooLargeError        prompt_too_large
    │   └── InvalidModelNameError      invalid_model_name
    ├── AuthenticationError            unauthorized         no key, or unknown/revoked/expired
    ├── PermissionDeniedError          forbidden            the key lacks the admin scope
    ├── ModelNotFoundError             model_not_found      the model is not installed
    ├── ModelProtectedError            model_protected      the built-in model cannot be deleted
    ├── ModelInUseError                model_in_use         the active model cannot be deleted
    ├── NotSupportedError              not_supported        the backend lacks the capability
    ├── OverloadedError                overloaded           admission queue full or timed out
    ├── DatabaseUnavailableError       database_unavailable
    └── BackendError                   backend_error        the backend answered with an error
        ├── BackendUnavailableError    backend_unavailable  connection refused / reset
        ├── BackendBusyError           backend_busy         the backend's own queue is full
        ├── BackendTimeoutError        backend_timeout      no answer / no token in time
        └── BackendStreamError         backend_stream_error error line or cut stream mid-way
"""

from __future__ import annotations


class LlmserveError(Exception):
    """Base of every error llmserve reports to a client. ``detail`` is for humans."""

    code = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequestError(LlmserveError):
    code = "invalid_request"


class PromptTooLargeError(InvalidRequestError):
    code = "prompt_too_large"


class InvalidModelNameError(InvalidRequestError):
    code = "invalid_model_name"


class AuthenticationError(LlmserveError):
    code = "unauthorized"


class PermissionDeniedError(LlmserveError):
    code = "forbidden"


class ModelNotFoundError(LlmserveError):
    code = "model_not_found"


class ModelProtectedError(LlmserveError):
    code = "model_protected"


class ModelInUseError(LlmserveError):
    code = "model_in_use"


class NotSupportedError(LlmserveError):
    code = "not_supported"


class OverloadedError(LlmserveError):
    code = "overloaded"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class DatabaseUnavailableError(LlmserveError):
    code = "database_unavailable"


class BackendError(LlmserveError):
    code = "backend_error"


class BackendUnavailableError(BackendError):
    code = "backend_unavailable"

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class BackendBusyError(BackendError):
    code = "backend_busy"

    def __init__(self, detail: str, retry_after: int = 2) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class BackendTimeoutError(BackendError):
    code = "backend_timeout"


class BackendStreamError(BackendError):
    code = "backend_stream_error"


def all_error_types() -> list[type[LlmserveError]]:
    """Every concrete error type, for the tests that prove each one is mapped."""
    found: list[type[LlmserveError]] = []
    pending: list[type[LlmserveError]] = [LlmserveError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
