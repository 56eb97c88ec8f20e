"""Prometheus metrics, served at ``/metrics``.

Cheap on the hot path by design: nothing is recorded per token. A generation is observed once,
when it ends (from the same outcome that becomes its request-log row); in-flight and queued
generations are read from admission control only when Prometheus scrapes; HTTP requests are
counted by a small ASGI middleware, labelled with the route template (never the raw path, so
model names and typos cannot blow up the label set).

Each app has its own registry. With ``llmserve serve --workers N`` every worker keeps its own
numbers and a scrape reaches one of them: run one worker per container (the compose setup
does) or scrape each worker's port if you need exact totals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.services.request_log import RequestLogRow

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "llmserve_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.generations = Counter(
            "llmserve_generations",
            "Generations by route and outcome",
            ["route", "status"],
            registry=r,
        )
        self.generation_seconds = Histogram(
            "llmserve_generation_duration_seconds",
            "Whole generation time",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "llmserve_time_to_first_token_seconds",
            "Time to the first token",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "llmserve_tokens_generated", "Tokens generated", ["model"], registry=r
        )
        self.cancellations = Counter(
            "llmserve_cancellations",
            "Generations abandoned by their client, by phase",
            ["phase"],
            registry=r,
        )
        self.backend_errors = Counter(
            "llmserve_backend_errors", "Backend failures by kind", ["kind"], registry=r
        )
        self.backend_up = Gauge(
            "llmserve_backend_up", "1 if the backend answered the last call, else 0", registry=r
        )
        self.log_rows_dropped = Counter(
            "llmserve_request_log_dropped_rows",
            "Request-log rows dropped because the buffer was full",
            registry=r,
        )
        self.policy_rejections = Counter(
            "llmserve_policy_rejections",
            "Requests a key's policy refused, by reason: rpm, tpm, concurrency, budget, model, "
            "unavailable (database down, POLICY_FAIL_MODE=closed)",
            ["reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "llmserve_generations_in_flight", "Generations running now", registry=r
        )
        self.queued = Gauge(
            "llmserve_generations_queued", "Generations waiting for a slot", registry=r
        )

    def policy_rejected(self, reason: str) -> None:
        self.policy_rejections.labels(reason).inc()

    def follow_admission(self, running: Callable[[], float], queued: Callable[[], float]) -> None:
        """Read the admission counters at scrape time (no cost per request)."""
        self.in_flight.set_function(running)
        self.queued.set_function(queued)

    def generation_ended(self, row: RequestLogRow, error_code: str | None) -> None:
        self.generations.labels(row.route, row.status).inc()
        self.generation_seconds.labels(row.route).observe(row.duration_ms / 1000.0)
        if row.ttft_ms is not None:
            self.ttft_seconds.labels(row.route).observe(row.ttft_ms / 1000.0)
        if row.completion_tokens:
            self.tokens.labels(row.model).inc(row.completion_tokens)
        if row.status == "cancelled":
            phase = "streaming" if row.ttft_ms is not None else "before_first_token"
            self.cancellations.labels(phase).inc()
        if error_code is not None and error_code.startswith("backend_"):
            self.backend_errors.labels(error_code).inc()
            if error_code == "backend_unavailable":
                self.backend_up.set(0)
        elif row.status == "ok":
            self.backend_up.set(1)


class HttpMetricsMiddleware:
    """Counts requests by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.counter = metrics.http_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        def capture(message: Message) -> Awaitable[None]:
            nonlocal status  # a plain function: no coroutine of its own per message
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            self.counter.labels(getattr(route, "path", "unmatched"), str(status)).inc()
