"""Prometheus metrics of one service instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "prodimg_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "prodimg_http_request_duration_seconds",
            "Time from request start to the end of the response",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_images = Histogram(
            "prodimg_batch_images", "Images per pipeline call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "prodimg_batch_requests",
            "Requests packed into one pipeline call",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.pipeline_seconds = Histogram(
            "prodimg_pipeline_seconds",
            "Duration of one pipeline call (including PNG encoding)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "prodimg_queue_depth", "Requests waiting for the generation worker", registry=r
        )
        self.images = Counter("prodimg_images_generated", "Images generated and returned", registry=r)
        self.rejected = Counter(
            "prodimg_generation_rejected",
            "Generation requests refused before or during generation",
            ["reason"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
