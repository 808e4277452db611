"""Prometheus metrics of the reward server (requests, latency and its quantiles, batch sizes, queue, judge time)."""
from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any, Sequence


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self, batcher: Any, judge: Any, endpoints: Sequence[str] = ()):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: timestamps nobody reads
        self.registry = CollectorRegistry()
        self.requests = Counter("reward_server_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry)
        self.completions = Counter("reward_server_completions", "completions scored, by reward", ["reward"], registry=self.registry)
        self.latency = Histogram("reward_server_request_latency_seconds", "request latency by endpoint", ["endpoint"],
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320), registry=self.registry)
        self.latency_quantile = Gauge("reward_server_request_latency_quantile_seconds",
                                      "latency quantiles of the last 2048 scoring requests", ["quantile"], registry=self.registry)
        self.batch_completions = Histogram("reward_server_batch_completions", "completions per merged judge call",
                                           buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=self.registry)
        self.batch_requests = Histogram("reward_server_batch_requests", "requests merged per judge call",
                                        buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        Gauge("reward_server_queue_depth", "requests waiting for the judge", registry=self.registry).set_function(lambda: batcher.depth)
        Gauge("reward_server_requests_judging", "requests in the judge call under way", registry=self.registry).set_function(lambda: batcher.judging)
        stats = getattr(judge, "stats", None)
        judgements = Gauge("reward_server_judgements", "judge questions asked since start (the engine's count)", registry=self.registry)
        judgements.set_function(lambda: float(getattr(stats, "requests", 0)) if stats is not None else 0.0)
        judge_seconds = Gauge("reward_server_judge_seconds", "seconds spent in the judge since start", registry=self.registry)
        judge_seconds.set_function(lambda: float(getattr(stats, "seconds", 0.0)) if stats is not None else 0.0)
        self.endpoints = frozenset(endpoints)  # labelled by name; any other path counts as "other"
        self._recent: deque[float] = deque(maxlen=2048)
        self._lock = threading.Lock()

    def request(self, endpoint: str, status: int, seconds: float | None = None, scored: dict[str, int] | None = None) -> None:
        """Count a request; latency only for answered ones (a refusal's time says nothing about the judge)."""
        endpoint = endpoint if endpoint in self.endpoints else "other"  # unknown paths must not grow the label set
        self.requests.labels(endpoint, str(status)).inc()
        if seconds is not None:
            self.latency.labels(endpoint).observe(seconds)
            with self._lock:
                self._recent.append(seconds)
        for name, n in (scored or {}).items():
            self.completions.labels(name).inc(n)

    def batch(self, completions: int, requests: int) -> None:
        self.batch_completions.observe(completions)
        self.batch_requests.observe(requests)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        with self._lock:
            recent = sorted(self._recent)
        for q in (0.5, 0.9, 0.99):
            self.latency_quantile.labels(str(q)).set(percentile(recent, q) if recent else float("nan"))
        return generate_latest(self.registry)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list.

    >>> percentile([1, 2, 3, 4], 0.5), percentile([1, 2, 3, 4], 0.99), percentile([7], 0.99)
    (2, 4, 7)
    """
    return sorted_values[max(math.ceil(q * len(sorted_values)) - 1, 0)]
