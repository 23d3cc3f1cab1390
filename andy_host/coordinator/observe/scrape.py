"""What /metrics reads from the pool at scrape time: build, hosts by status, queues,
the relay's running totals, and the per-host series (jobs, tokens, jobs in flight, GPU
readings) under the bounded labels of :mod:`~andy_host.coordinator.observe.hostseries`.

Names follow Prometheus' conventions: a running total is a counter named ``*_total``,
a unit is in the name (``_bytes``, ``_seconds``, ``_celsius``, ``_watts``) and a share
is a ``_ratio`` from 0 to 1. The GPUs of hosts that share a label (a duplicated name,
or ``(other)``) are added up by GPU index: memory and power summed, utilisation
averaged, the hottest temperature.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from andy_host import __version__
from andy_host.coordinator.hosts.registry import Host, Registry
from andy_host.coordinator.observe.hostseries import OTHER, HostSeries, ModelLabels
from andy_host.coordinator.observe.stats import PoolStats
from andy_host.coordinator.pool.scheduler import Scheduler

STATUSES = ("active", "busy", "idle", "paused", "draining", "backend_down", "quarantined")
POOL_TOTALS = (  # (PoolStats field, metric name without _total, help)
    ("requests", "andy_jobs_accepted", "Client jobs accepted by the relay (chat and embeddings)"),
    ("completed", "andy_jobs_completed", "Client jobs that ended with a complete answer"),
    ("failed", "andy_jobs_failed", "Client jobs that ended with an error after being accepted"),
    ("failovers", "andy_failovers", "Attempts abandoned for another host"),
    ("rescued", "andy_rescued", "Jobs completed after a host failed them"),
    ("continued", "andy_continued", "Streams continued on another host after content was sent"),
    ("ejections", "andy_ejections", "Hosts taken out of rotation"),
    ("strikes", "andy_strikes", "Host claims or conduct the coordinator did not believe"),
    ("checks", "andy_answer_checks", "Answer checks with a verdict"),
    ("checks_failed", "andy_answer_checks_failed", "Answer checks a host failed"),
    ("quarantines", "andy_quarantines", "Hosts put in quarantine"),
)


@dataclass(slots=True)
class _Gpu:
    """One GPU index under one label, added up over the hosts that share the label."""

    used: float | None = None
    total: float | None = None
    power: float | None = None
    temperature: int | None = None
    utilisation: list[int] | None = None


def _add(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else a + b


class PoolCollector(Collector):
    def __init__(self, registry: Registry, scheduler: Scheduler, stats: PoolStats, hosts: HostSeries,
                 models: ModelLabels) -> None:
        self.registry, self.scheduler, self.stats, self.hosts = registry, scheduler, stats, hosts
        self.models = models

    def collect(self) -> Iterable[Metric]:
        build = GaugeMetricFamily("andy_build_info", "The coordinator's version", labels=["version", "python"])
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        yield from self._pool()
        for field, name, help_text in POOL_TOTALS:
            yield CounterMetricFamily(name, help_text, value=getattr(self.stats, field))
        shown = self.hosts.refresh(self.registry.hosts.values())
        yield from self._per_host(shown)
        yield from _gpus(shown)

    def _pool(self) -> Iterator[Metric]:
        hosts = GaugeMetricFamily("andy_hosts", "Connected hosts by status", labels=["status"])
        counts: dict[str, int] = {}
        for host in self.registry.hosts.values():
            status = host.shown_status
            counts[status] = counts.get(status, 0) + 1
        for status in STATUSES:
            hosts.add_metric([status], counts.get(status, 0))
        yield hosts
        queue = GaugeMetricFamily("andy_queue_depth", "Requests waiting for a host, by model (0 for each "
                                  "model served)", labels=["model"])
        for model, depth in sorted(self._queues().items()):
            queue.add_metric([model], depth)
        yield queue
        in_flight = GaugeMetricFamily("andy_jobs_in_flight", "Jobs running on hosts")
        in_flight.add_metric([], self.registry.in_flight())
        yield in_flight

    def _queues(self) -> dict[str, int]:
        """Requests waiting, by model label (the models served by most hosts take the
        places left first; the rest add up under ``OTHER``)."""
        by_model = self.registry.by_model
        depths: dict[str, int] = {}
        for model in sorted(by_model.keys() | self.scheduler.queues.keys(),
                            key=lambda m: (-len(by_model.get(m, ())), m)):
            label = self.models.label(model)
            depths[label] = depths.get(label, 0) + self.scheduler.queued(model)
        return depths

    def _per_host(self, shown: dict[str, list[Host]]) -> Iterator[Metric]:
        jobs = CounterMetricFamily("andy_host_jobs_served", "Client jobs completed, by host name", labels=["host"])
        tokens = CounterMetricFamily("andy_host_completion_tokens", "Measured completion tokens of client jobs, "
                                     "by host name", labels=["host"])
        for label, totals in [*self.hosts.named.items(), (OTHER, self.hosts.other)]:
            if label != OTHER or totals.jobs or totals.tokens or OTHER in shown:
                jobs.add_metric([label], totals.jobs)
                tokens.add_metric([label], totals.tokens)
        in_flight = GaugeMetricFamily("andy_host_jobs_in_flight", "Jobs running, by host name", labels=["host"])
        aggregated = GaugeMetricFamily("andy_hosts_aggregated", f"Connected hosts counted under host=\"{OTHER}\" "
                                       "(coordinator.metrics_max_hosts reached)")
        for label, members in shown.items():
            in_flight.add_metric([label], sum(len(h.jobs) for h in members))
        aggregated.add_metric([], len(shown.get(OTHER, ())))
        yield from (jobs, tokens, in_flight, aggregated)


def _gpus(shown: dict[str, list[Host]]) -> Iterator[Metric]:
    gpus: dict[tuple[str, str], _Gpu] = {}
    for label, members in shown.items():
        for host in members:
            for reading in host.hardware.gpus:  # typed and clamped at decode
                gpu = gpus.setdefault((label, str(reading.index)), _Gpu())
                gpu.used = _add(gpu.used, reading.memory_used)
                gpu.total = _add(gpu.total, reading.memory_total)
                gpu.power = _add(gpu.power, reading.power_draw_w)
                if reading.temperature is not None:
                    gpu.temperature = max(gpu.temperature or reading.temperature, reading.temperature)
                if reading.utilization_gpu is not None:
                    gpu.utilisation = [*(gpu.utilisation or []), reading.utilization_gpu]
    families = {
        key: GaugeMetricFamily(f"andy_host_gpu_{key}", text, labels=["host", "gpu"])
        for key, text in (("memory_used_bytes", "GPU memory used"), ("memory_total_bytes", "GPU memory"),
                          ("utilization_ratio", "GPU utilisation, 0 to 1"),
                          ("temperature_celsius", "GPU temperature"), ("power_watts", "GPU power draw"))
    }
    for labels, gpu in gpus.items():
        utilisation = None if gpu.utilisation is None else sum(gpu.utilisation) / len(gpu.utilisation) / 100
        for key, value in (("memory_used_bytes", gpu.used), ("memory_total_bytes", gpu.total),
                           ("utilization_ratio", utilisation), ("temperature_celsius", gpu.temperature),
                           ("power_watts", gpu.power)):
            if value is not None:
                families[key].add_metric(list(labels), value)
    yield from families.values()
