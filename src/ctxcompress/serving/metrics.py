"""The service's Prometheus metrics (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .batcher import Batcher
from .store import ContextStore


class ServiceMetrics:
    """Prometheus metrics of one app (its own registry, so several apps can share a process)."""

    def __init__(self, store: ContextStore, batcher: Batcher) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ctxcompress_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "ctxcompress_request_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.batch_size = Histogram(
            "ctxcompress_batch_size",
            "Questions (or documents) per model call.",
            ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "ctxcompress_batch_seconds",
            "Seconds per model call.",
            ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.generated_tokens = Counter(
            "ctxcompress_generated_tokens", "Tokens generated.", registry=r
        )
        self.rejected = Counter(
            "ctxcompress_queue_rejections", "Requests refused with 503 (queue full).", registry=r
        )
        Gauge("ctxcompress_queue_depth", "Jobs waiting for the model.", registry=r).set_function(
            lambda: batcher.depth
        )
        Gauge("ctxcompress_batch_busy", "Jobs the model is running now.", registry=r).set_function(
            lambda: batcher.busy
        )
        Gauge("ctxcompress_store_contexts", "Stored contexts.", registry=r).set_function(
            lambda: len(store)
        )
        Gauge("ctxcompress_store_bytes", "Bytes of stored context files.", registry=r).set_function(
            lambda: store.total_bytes
        )
        Gauge(
            "ctxcompress_store_max_bytes", "The store's size cap (0: none).", registry=r
        ).set_function(lambda: store.max_bytes or 0)

    def on_batch(self, kind: str, size: int, seconds: float) -> None:
        self.batch_size.labels(kind).observe(size)
        self.batch_seconds.labels(kind).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
