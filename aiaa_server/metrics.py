"""The server's metrics, kept in a `prometheus-client` registry per app and rendered in the Prometheus text format.

Each `MetricsRegistry` owns its own `CollectorRegistry` (several apps may live in one process, e.g. in tests),
with the process and platform collectors registered on it. Counters, gauges (some computed at scrape time)
and histograms are `prometheus-client` objects, thread-safe: the inference workers and the event loop update
them concurrently.

Multiprocess mode: when `PROMETHEUS_MULTIPROC_DIR` is set (before `prometheus_client` is first imported, as
the library requires), counters and histograms are written to files in that folder and `/metrics` is rendered
by a `MultiProcessCollector` over them, so any worker process answers for all of them. The scrape-time gauges
(queue depth, in-flight jobs, capacity, workers) are then those of the answering process, and the process /
platform metrics are left out (they describe one process only, see the `prometheus-client` documentation).
The exposition writes labels sorted by name and values as floats (`1.0`), as `prometheus-client` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client import exposition as _exposition
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# `generate_latest` writes the 0.0.4 text format; newer clients point CONTENT_TYPE_LATEST at 1.0.0 and keep
# the 0.0.4 type as CONTENT_TYPE_PLAIN_0_0_4 (older ones only have CONTENT_TYPE_LATEST, which is 0.0.4).
CONTENT_TYPE: str = getattr(_exposition, "CONTENT_TYPE_PLAIN_0_0_4", _exposition.CONTENT_TYPE_LATEST)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds: from a fast /v1/models answer to a long CPU segmentation.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)

LabelValues = tuple[str, ...]

# No `*_created` series (a process-wide switch of prometheus-client): /metrics keeps the series it always had.
disable_created_metrics()


class FunctionGauge(Collector):
    """A gauge read at scrape time, e.g. a queue's current depth: `function` yields (label values, value)."""

    def __init__(
        self, name: str, help_text: str, labelnames: Sequence[str],
        function: Callable[[], Iterable[tuple[LabelValues, float]]],
    ) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._function = function

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.help, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.help, labels=self.labelnames)
        for values, value in sorted(self._function()):
            family.add_metric([str(v) for v in values], value)
        yield family


class MetricsRegistry:
    """One app's metrics. `counter` takes the name without `_total` (prometheus-client adds it)."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir or os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._scrape_time: list[FunctionGauge] = []  # also rendered in multiprocess mode
        self._metrics: dict[str, Collector] = {}

    def _add(self, name: str, metric: Collector) -> None:
        if name in self._metrics:
            raise ValueError(f"metric {name} is already registered")
        self._metrics[name] = metric

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help_text, tuple(labelnames), registry=self.registry)
        self._add(name, metric)
        return metric

    def gauge(
        self, name: str, help_text: str, labelnames: Sequence[str] = (),
        function: Callable[[], Iterable[tuple[LabelValues, float]]] | None = None,
    ) -> Gauge | FunctionGauge:
        """A settable `Gauge`, or (with `function`) a `FunctionGauge` read at scrape time."""
        metric: Gauge | FunctionGauge
        if function is None:
            metric = Gauge(name, help_text, tuple(labelnames), registry=self.registry)
        else:
            metric = FunctionGauge(name, help_text, labelnames, function)
            self.registry.register(metric)
            self._scrape_time.append(metric)
        self._add(name, metric)
        return metric

    def histogram(
        self, name: str, help_text: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        metric = Histogram(name, help_text, tuple(labelnames), registry=self.registry, buckets=tuple(buckets))
        self._add(name, metric)
        return metric

    def get(self, name: str) -> Collector:
        return self._metrics[name]

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4, served as `CONTENT_TYPE`)."""
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
            for gauge in self._scrape_time:
                registry.register(gauge)
            return _exposition.generate_latest(registry).decode("utf-8")
        return _exposition.generate_latest(self.registry).decode("utf-8")


# Any token is a valid HTTP method: unknown ones share one label, so clients cannot grow the series count.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
OTHER_METHOD = "other"


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


class HttpMetrics:
    """Per-route request counts by status and latency histograms, fed by the ASGI middleware in api/metrics.py.

    `path` must be a route template (never the raw request path) and is bounded by the caller."""

    def __init__(self, registry: MetricsRegistry) -> None:
        self.requests = registry.counter(  # exposed as aiaa_http_requests_total
            "aiaa_http_requests", "HTTP requests answered, by route template, method and status",
            ("method", "path", "status"),
        )
        self.latency = registry.histogram(
            "aiaa_http_request_duration_seconds", "HTTP request latency (first byte in to last byte out) by route",
            ("method", "path"),
        )

    def record(self, method: str, path: str, status: int, seconds: float) -> None:
        method = method_label(method)
        self.requests.labels(method=method, path=path, status=str(status)).inc()
        self.latency.labels(method=method, path=path).observe(seconds)
