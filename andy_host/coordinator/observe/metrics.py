"""Prometheus metrics (prometheus-client), one registry per application.

Counters and histograms are updated on the request path (label children looked up
once); what describes the pool now, the relay's running totals and the per-host series
are read at scrape time (:mod:`~andy_host.coordinator.observe.scrape`). Names follow
docs/metrics.md: counters ``*_total``, units in names, no ``*_created`` series.

The dashboard's one-second history is :class:`~andy_host.coordinator.observe.history.History`,
fed from the same calls.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import Metric

from andy_host.coordinator.hosts.registry import Host, Registry
from andy_host.coordinator.observe.history import History
from andy_host.coordinator.observe.hostseries import HostSeries, ModelLabels
from andy_host.coordinator.observe.scrape import PoolCollector
from andy_host.coordinator.observe.stats import PoolStats
from andy_host.coordinator.pool.scheduler import Scheduler

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CREATED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


class _WithoutCreated:
    """The registry as Prometheus should read it: no ``*_created`` samples, whatever
    prometheus_client's process-wide setting (``PROMETHEUS_DISABLE_CREATED_SERIES``,
    ``disable_created_metrics()``) and whoever imported it first."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            if metric.type in CREATED_TYPES:
                metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class Metrics:
    def __init__(self, registry: Registry, scheduler: Scheduler, stats: PoolStats, max_hosts: int = 100,
                 max_models: int = 100) -> None:
        self.prom = CollectorRegistry(auto_describe=False)
        self.requests = Counter("andy_requests", "Requests by endpoint, model and status",
                                ["endpoint", "model", "status"], registry=self.prom)
        self.ttft = Histogram("andy_time_to_first_token_seconds", "Time to the first content token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=self.prom)
        self.latency = Histogram("andy_request_duration_seconds", "Whole request time",
                                 ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=self.prom)
        self.tokens = Counter("andy_completion_tokens", "Completion tokens generated (measured), by model",
                              ["model"], registry=self.prom)
        self.prompt_tokens = Counter("andy_prompt_tokens", "Prompt tokens processed (chat and embeddings), by model",
                                     ["model"], registry=self.prom)
        self.rate_limited = Counter("andy_rate_limited", "Requests answered 429", ["endpoint"], registry=self.prom)
        self.hosts = HostSeries(max_hosts)
        self.models = ModelLabels(max_models)  # model names come from hosts: a bounded label too
        self.prom.register(PoolCollector(registry, scheduler, stats, self.hosts, self.models))
        self.history = History()
        # labelled children, looked up once (``labels()`` takes a lock and builds a key),
        # by label value: as bounded as the series
        self._outcomes: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._per_model: dict[str, tuple[Histogram, Counter]] = {}
        self._prompt: dict[str, Counter] = {}

    def observe(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        model = self.models.label(model)
        children = self._outcomes.get((endpoint, model, status))
        if children is None:
            children = self._outcomes[(endpoint, model, status)] = (
                self.requests.labels(endpoint, model, str(status)), self.latency.labels(endpoint, model)
            )
        children[0].inc()
        children[1].observe(seconds)
        self.history.request(endpoint, status)
        if status == 429:
            self.rate_limited.labels(endpoint).inc()

    def _model(self, model: str) -> tuple[Histogram, Counter]:
        model = self.models.label(model)
        children = self._per_model.get(model)
        if children is None:
            children = self._per_model[model] = (self.ttft.labels(model), self.tokens.labels(model))
        return children

    def observe_ttft(self, model: str, seconds: float) -> None:
        self._model(model)[0].observe(seconds)
        self.history.ttft(seconds)

    def observe_tokens(self, model: str, tokens: int) -> None:
        if tokens:
            self._model(model)[1].inc(tokens)
            self.history.tokens(tokens)

    def observe_prompt_tokens(self, model: str, tokens: int) -> None:
        if tokens:
            model = self.models.label(model)
            child = self._prompt.get(model)
            if child is None:
                child = self._prompt[model] = self.prompt_tokens.labels(model)
            child.inc(tokens)

    def host_left(self, host: Host) -> None:
        """Count the rest of what a departing host did into its series."""
        self.hosts.left(host)

    def render(self) -> bytes:
        return generate_latest(_WithoutCreated(self.prom))


METRICS = web.AppKey("metrics", Metrics)
