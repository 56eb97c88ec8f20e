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

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.services.request_log import RequestLogRow

if TYPE_CHECKING:
    from llmserve.backends._servers import BackendServer

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

    def follow_backends(self, servers: Sequence[BackendServer]) -> None:
        """Several backend servers: their health, in-flight generations, generations, errors
        and failovers, labelled ``backend`` (the base URL as configured), read at scrape time."""
        self.registry.register(_BackendCollector(servers))

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


class _BackendCollector(Collector):
    def __init__(self, servers: Sequence[BackendServer]) -> None:
        self._servers = servers

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "llmserve_backend_server_up",
            "1 while the backend server is in rotation, 0 while its circuit breaker is open",
            labels=["backend"],
        )
        in_flight = GaugeMetricFamily(
            "llmserve_backend_server_in_flight",
            "Generations running on the backend server now",
            labels=["backend"],
        )
        generations = CounterMetricFamily(
            "llmserve_backend_server_generations",
            "Generations and embeddings routed to the backend server",
            labels=["backend"],
        )
        failures = CounterMetricFamily(
            "llmserve_backend_server_errors",
            "Failures of the backend server by kind (failed probes: probe_failed)",
            labels=["backend", "kind"],
        )
        failovers = CounterMetricFamily(
            "llmserve_backend_server_failovers",
            "Requests moved to another server after this one failed before any output",
            labels=["backend"],
        )
        for server in self._servers:
            up.add_metric([server.url], 1.0 if server.up else 0.0)
            in_flight.add_metric([server.url], server.in_flight)
            generations.add_metric([server.url], server.generations)
            failovers.add_metric([server.url], server.failovers)
            for kind, count in sorted(server.errors.items()):
                failures.add_metric([server.url, kind], count)
        yield from (up, in_flight, generations, failures, failovers)


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
