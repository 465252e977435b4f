"""What the server counts, for Prometheus (`GET /metrics`): requests by path and status,
prompt and generated tokens, the engine's queue and running sequences, time to the first
token and whole-request latency. Each app has its own registry, so that two apps in one
process (the tests) never share or clash."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PATHS = ("/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")
_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_FIRST = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, *, waiting: Callable[[], float], running: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lmforge_requests", "HTTP requests answered, by path and status",
                                ["path", "status"], registry=r)
        self.prompt_tokens = Counter("lmforge_prompt_tokens", "prompt tokens submitted",
                                     registry=r)
        self.generated_tokens = Counter("lmforge_generated_tokens", "tokens generated",
                                        registry=r)
        Gauge("lmforge_queue_depth", "sequences waiting for a slot in the engine",
              registry=r).set_function(waiting)
        Gauge("lmforge_running_sequences", "sequences the engine is generating",
              registry=r).set_function(running)
        self.first_token = Histogram("lmforge_time_to_first_token_seconds",
                                     "from a request's arrival to its first generated token",
                                     buckets=_FIRST, registry=r)
        self.latency = Histogram("lmforge_request_latency_seconds",
                                 "from a generation request's arrival to its last token",
                                 ["endpoint"], buckets=_LATENCY, registry=r)

    def answered(self, path: str, status: int) -> None:
        known = path if path in PATHS or path.startswith("/v1/models/") else "other"
        self.requests.labels("/v1/models" if known.startswith("/v1/models/") else known,
                             str(status)).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
