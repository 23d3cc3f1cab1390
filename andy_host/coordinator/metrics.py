"""Prometheus metrics (prometheus-client), one registry per application.

Counters and histograms are updated on the request path; gauges that describe the
pool now (hosts by status, queue depth, per-host GPU readings) are collected at
scrape time. A one-second sampler keeps the last minutes of requests and tokens per
second for the dashboard.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from andy_host.coordinator.hosts import Registry
from andy_host.coordinator.scheduler import Scheduler
from andy_host.coordinator.stats import PoolStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
HISTORY_SECONDS = 600


class PoolCollector(Collector):
    def __init__(self, registry: Registry, scheduler: Scheduler, stats: PoolStats) -> None:
        self.registry, self.scheduler, self.stats = registry, scheduler, stats

    def collect(self) -> Iterable[Metric]:
        hosts = GaugeMetricFamily("andy_hosts", "Connected hosts by status", labels=["status"])
        counts: dict[str, int] = {}
        for host in self.registry.hosts.values():
            counts[host.shown_status] = counts.get(host.shown_status, 0) + 1
        for status in ("active", "busy", "paused", "draining", "backend_down"):
            hosts.add_metric([status], counts.get(status, 0))
        yield hosts
        queue = GaugeMetricFamily("andy_queue_depth", "Requests waiting for a host", labels=["model"])
        for model, q in self.scheduler.queues.items():
            queue.add_metric([model], q.size)
        yield queue
        in_flight = GaugeMetricFamily("andy_jobs_in_flight", "Jobs running on hosts")
        in_flight.add_metric([], self.registry.in_flight())
        yield in_flight
        for name, help_text in (("failovers", "Attempts abandoned for another host"),
                                ("rescued", "Requests completed after a host failed them"),
                                ("continued", "Streams continued on another host"),
                                ("ejections", "Hosts taken out of rotation")):
            family = GaugeMetricFamily(f"andy_{name}", help_text)  # monotonic, kept by the relay
            family.add_metric([], getattr(self.stats, name))
            yield family
        gpu = {
            key: GaugeMetricFamily(f"andy_host_gpu_{key}", text, labels=["host", "gpu"])
            for key, text in (("memory_used_bytes", "GPU memory used"), ("memory_total_bytes", "GPU memory"),
                              ("utilization_percent", "GPU utilisation"), ("temperature_celsius", "GPU temperature"))
        }
        for host in self.registry.hosts.values():
            for reading in host.hardware.gpus:  # typed and clamped at decode
                labels = [host.name, str(reading.index)]
                for key, value in (("memory_used_bytes", reading.memory_used),
                                   ("memory_total_bytes", reading.memory_total),
                                   ("utilization_percent", reading.utilization_gpu),
                                   ("temperature_celsius", reading.temperature)):
                    if value is not None:
                        gpu[key].add_metric(labels, value)
        yield from gpu.values()


class Metrics:
    def __init__(self, registry: Registry, scheduler: Scheduler, stats: PoolStats) -> None:
        self.prom = CollectorRegistry(auto_describe=False)
        self.requests = Counter("andy_requests", "Requests by endpoint, model and status",
                                ["endpoint", "model", "status"], registry=self.prom)
        self.ttft = Histogram("andy_time_to_first_token_seconds", "Time to the first content token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=self.prom)
        self.latency = Histogram("andy_request_duration_seconds", "Whole request time",
                                 ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=self.prom)
        self.tokens = Counter("andy_tokens_generated", "Completion tokens generated", ["model"], registry=self.prom)
        self.rate_limited = Counter("andy_rate_limited", "Requests answered 429", ["endpoint"], registry=self.prom)
        self.prom.register(PoolCollector(registry, scheduler, stats))
        self.history: deque[tuple[float, int, int]] = deque(maxlen=HISTORY_SECONDS)  # (time, requests, tokens)
        self._requests = 0
        self._tokens = 0
        # labelled children, looked up once (``labels()`` takes a lock and builds a key)
        self._outcomes: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._per_model: dict[str, tuple[Histogram, Counter]] = {}

    def observe(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        children = self._outcomes.get((endpoint, model, status))
        if children is None:
            children = self._outcomes[(endpoint, model, status)] = (
                self.requests.labels(endpoint, model, str(status)), self.latency.labels(endpoint, model)
            )
        children[0].inc()
        children[1].observe(seconds)
        self._requests += 1
        if status == 429:
            self.rate_limited.labels(endpoint).inc()

    def _model(self, model: str) -> tuple[Histogram, Counter]:
        children = self._per_model.get(model)
        if children is None:
            children = self._per_model[model] = (self.ttft.labels(model), self.tokens.labels(model))
        return children

    def observe_ttft(self, model: str, seconds: float) -> None:
        self._model(model)[0].observe(seconds)

    def observe_tokens(self, model: str, tokens: int) -> None:
        if tokens:
            self._model(model)[1].inc(tokens)
            self._tokens += tokens

    def sample(self) -> None:
        """Called every second: one point of the requests/tokens history."""
        self.history.append((time.time(), self._requests, self._tokens))

    def rates(self) -> list[dict[str, float]]:
        points = list(self.history)
        return [
            {"t": round(b[0], 1), "requests_per_s": (b[1] - a[1]) / max(b[0] - a[0], 1e-6),
             "tokens_per_s": (b[2] - a[2]) / max(b[0] - a[0], 1e-6)}
            for a, b in itertools.pairwise(points)
        ]

    def render(self) -> bytes:
        return generate_latest(self.prom)
