"""The llmserve error tree, and the one registry of what each error kind means on every face.

Lower layers (httpx, Ollama's JSON errors, the database) are translated into these types once,
at the boundary where they happen. Each type declares, here and nowhere else:

* ``code``: the machine code clients read (unique per type);
* ``status``: the HTTP status (``api/errors.py`` builds every error body from the type);
* ``exit_code``: the CLI's exit code (``cli/_run.py``);
* ``openai_type``: OpenAI's error ``type`` (``openai_code``: OpenAI's ``code``, when it differs);
* ``log_status``: the request log's status for a generation that failed with it.

A subclass declares only what differs from its parent; a test checks that every type resolves
every attribute and that no two types share a code.

    type                               code                  HTTP exit
    LlmserveError                      internal_error         500   1
    ├── InvalidRequestError            invalid_request        400   2  bad input the schema let by
    │   ├── PromptTooLargeError        prompt_too_large       413   2
    │   ├── InvalidModelNameError      invalid_model_name     400   2
    │   ├── UnsupportedError           unsupported            400   5  capability the model lacks
    │   ├── ImageUrlNotAllowedError    image_url_not_allowed  400   2
    │   ├── BodyTooLargeError          body_too_large         413   2
    │   ├── HeadersTooLargeError       headers_too_large      431   2
    │   ├── RouteNotFoundError         not_found              404   2  no route at this path
    │   └── MethodNotAllowedError      method_not_allowed     405   2
    ├── AuthenticationError            unauthorized           401  11  no or bad key
    ├── PermissionDeniedError          forbidden              403  12  the key is not admin
    │   └── ModelNotAllowedError       model_not_allowed      403  12  outside the key's models
    ├── ModelNotFoundError             model_not_found        404   3  the model is not installed
    ├── ModelProtectedError            model_protected        403   4  the built-in model stays
    ├── ModelInUseError                model_in_use           409   4  the active model stays
    ├── NotSupportedError              not_supported          501   5  the backend cannot do it
    ├── OverloadedError                overloaded             429   6  admission full/timed out
    ├── RateLimitedError               rate_limited           429   6  over a limit of the key
    ├── PolicyUnavailableError         policy_unavailable     503   7  no database, fail closed
    ├── DatabaseUnavailableError       database_unavailable   503   7
    ├── ShuttingDownError              shutting_down          503   9  cut by the server's stop
    └── BackendError                   backend_error          502   8  the backend said error
        ├── BackendUnavailableError    backend_unavailable    503   9  connection refused/reset
        ├── BackendBusyError           backend_busy           503   9  the backend's queue is full
        ├── BackendTimeoutError        backend_timeout        504  10  no answer/token in time
        └── BackendStreamError         backend_stream_error   502   8  error line or cut stream

``openai_type`` follows OpenAI's own choices: ``invalid_request_error`` for bad requests (401
included, with code ``invalid_api_key``), ``permission_error`` for 403, ``not_found_error`` for
404, ``rate_limit_error`` for 429, ``api_error`` for the rest. ``log_status`` is ``rejected`` for
an overload, ``timeout`` for a backend timeout and ``error`` otherwise.
"""

from __future__ import annotations

from typing import ClassVar, Literal

LogStatus = Literal["rejected", "timeout", "error"]


class LlmserveError(Exception):
    """Base of every error llmserve reports to a client. ``detail`` is for humans."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1
    openai_type: ClassVar[str] = "api_error"
    openai_code: ClassVar[str | None] = None  # None: the same as ``code``
    log_status: ClassVar[LogStatus] = "error"
    #: Seconds a client should wait before trying again (a ``Retry-After`` header), if any.
    retry_after: int | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequestError(LlmserveError):
    code = "invalid_request"
    status = 400
    exit_code = 2
    openai_type = "invalid_request_error"


class PromptTooLargeError(InvalidRequestError):
    code = "prompt_too_large"
    status = 413


class InvalidModelNameError(InvalidRequestError):
    code = "invalid_model_name"


class UnsupportedError(InvalidRequestError):
    """The request uses a capability its model or backend lacks (tools on the embedded engine,
    images on a text model); the message names the capability and the model."""

    code = "unsupported"
    exit_code = 5


class ImageUrlNotAllowedError(InvalidRequestError):
    code = "image_url_not_allowed"


class BodyTooLargeError(InvalidRequestError):
    code = "body_too_large"
    status = 413


class HeadersTooLargeError(InvalidRequestError):
    code = "headers_too_large"
    status = 431


class RouteNotFoundError(InvalidRequestError):
    code = "not_found"
    status = 404
    openai_type = "not_found_error"


class MethodNotAllowedError(InvalidRequestError):
    code = "method_not_allowed"
    status = 405


class AuthenticationError(LlmserveError):
    code = "unauthorized"
    status = 401
    exit_code = 11
    openai_type = "invalid_request_error"
    openai_code = "invalid_api_key"


class PermissionDeniedError(LlmserveError):
    code = "forbidden"
    status = 403
    exit_code = 12
    openai_type = "permission_error"


class ModelNotAllowedError(PermissionDeniedError):
    """The key's policy does not allow this model (``keys create --models``)."""

    code = "model_not_allowed"
    log_status = "rejected"


class ModelNotFoundError(LlmserveError):
    code = "model_not_found"
    status = 404
    exit_code = 3
    openai_type = "not_found_error"


class ModelProtectedError(LlmserveError):
    code = "model_protected"
    status = 403
    exit_code = 4
    openai_type = "permission_error"


class ModelInUseError(LlmserveError):
    code = "model_in_use"
    status = 409
    exit_code = 4
    openai_type = "invalid_request_error"


class NotSupportedError(LlmserveError):
    """The backend cannot do this at all (pulling models on the openai backend)."""

    code = "not_supported"
    status = 501
    exit_code = 5


class OverloadedError(LlmserveError):
    code = "overloaded"
    status = 429
    exit_code = 6
    openai_type = "rate_limit_error"
    log_status = "rejected"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class RateLimitedError(LlmserveError):
    """Over one of the key's limits: ``reason`` is ``rpm``, ``tpm``, ``concurrency`` or
    ``budget``; ``headers`` are OpenAI's ``x-ratelimit-*`` for the limits the key has."""

    code = "rate_limited"
    status = 429
    exit_code = 6
    openai_type = "rate_limit_error"
    openai_code = "rate_limit_exceeded"
    log_status = "rejected"

    def __init__(
        self,
        detail: str,
        *,
        reason: str = "rpm",
        retry_after: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.retry_after = retry_after
        self.headers = headers or {}


class PolicyUnavailableError(LlmserveError):
    """The key has limits, the database that counts them is down and POLICY_FAIL_MODE=closed."""

    code = "policy_unavailable"
    status = 503
    exit_code = 7

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class DatabaseUnavailableError(LlmserveError):
    code = "database_unavailable"
    status = 503
    exit_code = 7


class ShuttingDownError(LlmserveError):
    """The server is stopping: a request still running at the end of the grace period."""

    code = "shutting_down"
    status = 503
    exit_code = 9

    def __init__(self, detail: str = "the server is shutting down", retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class BackendError(LlmserveError):
    code = "backend_error"
    status = 502
    exit_code = 8


class BackendUnavailableError(BackendError):
    code = "backend_unavailable"
    status = 503
    exit_code = 9

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class BackendBusyError(BackendError):
    code = "backend_busy"
    status = 503
    exit_code = 9

    def __init__(self, detail: str, retry_after: int = 2) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class BackendTimeoutError(BackendError):
    code = "backend_timeout"
    status = 504
    exit_code = 10
    log_status = "timeout"


class BackendStreamError(BackendError):
    code = "backend_stream_error"


def all_error_types() -> list[type[LlmserveError]]:
    """Every error type, base first, for the tests that prove each one is complete."""
    found: list[type[LlmserveError]] = []
    pending: list[type[LlmserveError]] = [LlmserveError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
