"""OpenTelemetry at the service layer only (STYLE 13): one span per command, sampled.

Tracing is off unless CERTPLANE_TRACE_EXPORT names an exporter (`console`); the sample
ratio comes from CERTPLANE_TRACE_SAMPLE (default 0.01; a sampled caller always wins).
Every event still records a W3C traceparent: the caller's, or a fresh unsampled one.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Mapping

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()
_configured = False


def setup_metrics(service: str) -> None:
    """Export metrics when CERTPLANE_METRICS_EXPORT names an exporter (`console`)."""
    if os.environ.get("CERTPLANE_METRICS_EXPORT", "") != "console":
        return
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource

    interval = int(float(os.environ.get("CERTPLANE_METRICS_INTERVAL", "10")) * 1000)
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=interval)
    resource = Resource.create({"service.name": f"certplane-{service}"})
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))


def setup_tracing(service: str) -> None:
    """Install an SDK tracer provider if the environment asks for an exporter."""
    global _configured
    exporter_name = os.environ.get("CERTPLANE_TRACE_EXPORT", "")
    if _configured or not exporter_name:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    ratio = float(os.environ.get("CERTPLANE_TRACE_SAMPLE", "0.01"))
    provider = TracerProvider(
        # A caller that did not sample (the CLI never does) leaves the decision to our ratio.
        sampler=ParentBased(
            TraceIdRatioBased(ratio), remote_parent_not_sampled=TraceIdRatioBased(ratio)
        ),
        resource=Resource.create({"service.name": f"certplane-{service}"}),
    )
    if exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True


def tracer() -> trace.Tracer:
    return trace.get_tracer("certplane")


@contextlib.contextmanager
def command_span(
    name: str, headers: Mapping[str, str], attributes: dict[str, str]
) -> Iterator[str]:
    """The span of one command; yields the traceparent its events record."""
    incoming = headers.get("traceparent", "")
    if not _configured:  # no SDK: OTel's no-op span machinery was ~10 % of a small command
        yield incoming or new_traceparent()
        return
    with tracer().start_as_current_span(
        name, context=PROPAGATOR.extract(headers), attributes=attributes
    ):
        yield current_traceparent(incoming or new_traceparent())


_ids = random.Random()  # trace ids must be unique, not secret: no system call per id


def new_traceparent(sampled: bool = False) -> str:
    """A fresh W3C traceparent header value."""
    trace_id = _ids.getrandbits(128) or 1  # all-zero ids are invalid
    span_id = _ids.getrandbits(64) or 1
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def current_traceparent(fallback: str) -> str:
    """The active span's traceparent if it is recording, else `fallback`."""
    carrier: dict[str, str] = {}
    span = trace.get_current_span()
    if span.get_span_context().is_valid:
        PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", fallback)


def shutdown_tracing() -> None:
    """Flush and stop the SDK providers (spans and metrics), if they were installed."""
    from opentelemetry import metrics

    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


class _ProjectorMetrics:
    """Throughput and lag of one projector as OpenTelemetry metrics (no-op without an SDK)."""

    def __init__(self, name: str) -> None:
        from opentelemetry import metrics

        meter = metrics.get_meter("certplane")
        self._attributes = {"certplane.projection": name}
        self._events = meter.create_counter("certplane.projector.events", unit="{event}")
        self._batch_seconds = meter.create_histogram("certplane.projector.batch.duration", unit="s")
        self._lag = meter.create_gauge("certplane.projector.lag", unit="{event}")

    def batch(self, count: int, seconds: float) -> None:
        self._events.add(count, self._attributes)
        self._batch_seconds.record(seconds, self._attributes)

    def lag(self, events: int) -> None:
        self._lag.set(events, self._attributes)


def projector_metrics(name: str) -> _ProjectorMetrics:
    return _ProjectorMetrics(name)
