"""OpenTelemetry at the service layer only (STYLE 13): spans per command, metrics per process.

Tracing is off unless CERTPLANE_TRACE_EXPORT names exporters (`console`, `otlp`); the
sample ratio comes from CERTPLANE_TRACE_SAMPLE (default 0.01; a sampled caller always
wins). Every event still records a W3C traceparent: the caller's, or a fresh unsampled one.

Metrics are off unless CERTPLANE_METRICS_EXPORT names exporters, comma-separated:
`console`, `otlp` (OTLP over HTTP to OTEL_EXPORTER_OTLP_ENDPOINT, as every OpenTelemetry
SDK reads it) or `prometheus` (a scrape endpoint on CERTPLANE_METRICS_HOST and
CERTPLANE_METRICS_PORT). Off, the hot paths skip them entirely: OTel's no-op instruments
still cost a few microseconds per call, a measurable share of a small command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.config import ConfigError

log = logging.getLogger("certplane.telemetry")
PROPAGATOR = TraceContextTextMapPropagator()
METRIC_EXPORTERS = ("console", "otlp", "prometheus")
TRACE_EXPORTERS = ("console", "otlp")
SECONDS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DEFAULT_METRICS_PORT = 9464  # the port OpenTelemetry's Prometheus exporter conventionally uses
_configured = False
_metrics_on = False


def exporters(
    variable: str, choices: tuple[str, ...], env: Mapping[str, str] | None = None
) -> list[str]:
    """The exporters a variable names (comma-separated); unknown names are a ConfigError."""
    text = (os.environ if env is None else env).get(variable, "")
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if unknown := [n for n in names if n not in choices]:
        raise ConfigError(
            f"{variable}={text!r}: unknown exporter {', '.join(map(repr, unknown))};"
            f" choose from {', '.join(choices)} (comma-separated), or leave it unset for none"
        )
    return names


def _otlp(kind: str) -> object:
    """The OTLP/HTTP exporter for `kind` (metrics or traces); it reads the OTEL_EXPORTER_OTLP_* variables."""
    try:
        if kind == "metrics":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            return OTLPMetricExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    except ImportError as e:
        raise ConfigError(
            f"exporting {kind} with `otlp` needs the OTLP exporter: pip install 'certplane[telemetry]'"
        ) from e


def metrics_port(env: Mapping[str, str] | None = None) -> int:
    text = (os.environ if env is None else env).get("CERTPLANE_METRICS_PORT", "")
    try:
        port = int(text) if text.strip() else DEFAULT_METRICS_PORT
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(
            f"CERTPLANE_METRICS_PORT={text!r}: give a TCP port (0 picks a free one;"
            f" default {DEFAULT_METRICS_PORT})"
        )
    return port


def metrics_interval(env: Mapping[str, str] | None = None) -> float:
    """CERTPLANE_METRICS_INTERVAL: seconds between pushes, and between refreshes of what
    projections observe themselves (certificates expiring)."""
    text = (os.environ if env is None else env).get("CERTPLANE_METRICS_INTERVAL", "10")
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConfigError(
            f"CERTPLANE_METRICS_INTERVAL={text!r}: give seconds, more than 0 (default 10)"
        )
    return seconds


def _prometheus_reader() -> object:
    """A reader that prometheus_client's HTTP server collects from on every scrape."""
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server
    except ImportError as e:
        raise ConfigError(
            "exporting metrics with `prometheus` needs its exporter:"
            " pip install 'certplane[telemetry]'"
        ) from e
    host = os.environ.get("CERTPLANE_METRICS_HOST", "0.0.0.0")
    port = metrics_port()
    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as e:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port} ({e.strerror}): give each process on a host"
            " its own CERTPLANE_METRICS_PORT (0 picks a free one)"
        ) from e
    log.info("metrics for Prometheus at http://%s:%d/metrics", host, server.server_port)
    return PrometheusMetricReader()


def setup_metrics(service: str) -> None:
    """Install a meter provider with the exporters CERTPLANE_METRICS_EXPORT names."""
    global _metrics_on
    names = exporters("CERTPLANE_METRICS_EXPORT", METRIC_EXPORTERS)
    if _metrics_on or not names:
        return
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricReader,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource

    interval = int(metrics_interval() * 1000)
    readers: list[MetricReader] = []
    for name in names:
        if name == "prometheus":
            readers.append(_prometheus_reader())  # type: ignore[arg-type]
            continue
        exporter = ConsoleMetricExporter() if name == "console" else _otlp("metrics")
        readers.append(
            PeriodicExportingMetricReader(exporter, export_interval_millis=interval)  # type: ignore[arg-type]
        )
    resource = Resource.create({"service.name": f"certplane-{service}"})
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    _metrics_on = True


def metrics_enabled() -> bool:
    return _metrics_on


def tracing_enabled() -> bool:
    """Whether spans are recorded (an SDK was installed by `setup_tracing`)."""
    return _configured


def setup_tracing(service: str) -> None:
    """Install an SDK tracer provider if the environment asks for exporters."""
    global _configured
    names = exporters("CERTPLANE_TRACE_EXPORT", TRACE_EXPORTERS)
    if _configured or not names:
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
    for name in names:
        exporter = ConsoleSpanExporter() if name == "console" else _otlp("traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))  # type: ignore[arg-type]
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
    """Throughput, lag and state of one projector as OpenTelemetry metrics.

    Counted as they happen: `certplane.projector.events` and `.batch.duration`. Observed at
    each collection (export or scrape), from what the runner last saw (every ~2 s):
    `.lag` (events), `.lag.seconds` (age of the oldest event not yet applied, against the
    head) and `.state` (1 for the state the instance is in: running, standby, rebuilding,
    stopped on a dead letter, failed). A standby reports its state only: its position is
    not the projection's.
    """

    def __init__(self, name: str, states: tuple[str, ...]) -> None:
        from opentelemetry import metrics

        meter = metrics.get_meter("certplane")
        self.name = name
        self.states = states
        self.state = "standby"
        self.lag_events: int | None = None
        self.lag_seconds: float | None = None
        self._attributes = {"certplane.projection": name}
        self._events = meter.create_counter(
            "certplane.projector.events", unit="{event}", description="log positions applied"
        )
        self._batch_seconds = meter.create_histogram(
            "certplane.projector.batch.duration",
            unit="s",
            description="one batch applied and committed",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        _ProjectorGauges.install(meter).projectors[name] = self

    def batch(self, count: int, seconds: float) -> None:
        self._events.add(count, self._attributes)
        self._batch_seconds.record(seconds, self._attributes)

    def lag(self, events: int, seconds: float) -> None:
        self.lag_events, self.lag_seconds = events, seconds

    def set_state(self, state: str) -> None:
        self.state = state
        if state == "standby":
            self.lag_events = self.lag_seconds = None


class _ProjectorGauges:
    """One set of observable gauges per process, reading every projector registered in it
    (an instrument's name can be created once per meter; a second callback would be lost)."""

    _installed: _ProjectorGauges | None = None

    def __init__(self, meter: object) -> None:
        from opentelemetry.metrics import CallbackOptions, Observation

        self.projectors: dict[str, _ProjectorMetrics] = {}

        def lag(_: CallbackOptions) -> Iterator[Observation]:
            for p in list(self.projectors.values()):
                if p.lag_events is not None:
                    yield Observation(p.lag_events, {"certplane.projection": p.name})

        def lag_seconds(_: CallbackOptions) -> Iterator[Observation]:
            for p in list(self.projectors.values()):
                if p.lag_seconds is not None:
                    yield Observation(p.lag_seconds, {"certplane.projection": p.name})

        def state(_: CallbackOptions) -> Iterator[Observation]:
            for p in list(self.projectors.values()):
                for s in p.states:
                    attributes = {"certplane.projection": p.name, "certplane.state": s}
                    yield Observation(1 if s == p.state else 0, attributes)

        meter.create_observable_gauge(  # type: ignore[attr-defined]
            "certplane.projector.lag",
            [lag],
            unit="{event}",
            description="events in the log not yet applied",
        )
        meter.create_observable_gauge(  # type: ignore[attr-defined]
            "certplane.projector.lag.seconds", [lag_seconds], unit="s",
            description="how long ago the oldest event not yet applied was appended, against the head",
        )  # fmt: skip
        meter.create_observable_gauge(  # type: ignore[attr-defined]
            "certplane.projector.state", [state],
            description="1 for the state this instance is in (stopped: on a dead letter)",
        )  # fmt: skip

    @classmethod
    def install(cls, meter: object) -> _ProjectorGauges:
        if cls._installed is None:
            cls._installed = cls(meter)
        return cls._installed


def projector_metrics(name: str, states: tuple[str, ...]) -> _ProjectorMetrics:
    return _ProjectorMetrics(name, states)


class GatewayMetrics:
    """What a gateway decided, as OpenTelemetry metrics (created only when metrics are on).

    `certplane.gateway.commands` counts commands by type and outcome (accepted, or the
    rejection's code: `version_conflict`, `app_not_found`, ...); `.command.duration` is the
    time from receipt to reply of one command in `DURATION_SAMPLE`; `.append.batch.size`
    how many commands each group commit carried; `.conflicts` appends refused on a version
    another gateway wrote first. App names are not attributes: their number is unbounded.

    Measured (bench/cpu_per_command.py): the SDK's `add` and `record` cost 5-6 µs each here,
    and recording both per command took a quarter more gateway CPU per AddDomain. So counts
    are kept in a dict and read at each collection, and latency is sampled.
    """

    DURATION_SAMPLE = 8  # every 8th command in arrival order: a uniform sample of latency

    def __init__(self) -> None:
        from opentelemetry import metrics
        from opentelemetry.metrics import CallbackOptions, Observation

        meter = metrics.get_meter("certplane")
        self._counts: dict[tuple[str, str], int] = {}
        self._seen = 0
        self._conflict_sources: list[Callable[[], int]] = []

        def commands(_: CallbackOptions) -> Iterator[Observation]:
            for (command, outcome), count in list(self._counts.items()):
                attributes = {"certplane.command": command, "certplane.outcome": outcome}
                yield Observation(count, attributes)

        def conflicts(_: CallbackOptions) -> Iterator[Observation]:
            yield Observation(sum(source() for source in self._conflict_sources))

        meter.create_observable_counter(
            "certplane.gateway.commands", [commands], unit="{command}",
            description="commands answered, by type and outcome",
        )  # fmt: skip
        self._duration = meter.create_histogram(
            "certplane.gateway.command.duration", unit="s",
            description=f"receipt to reply, of one command in {self.DURATION_SAMPLE}"
            " (counts: certplane.gateway.commands)",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )  # fmt: skip
        self._batch = meter.create_histogram(
            "certplane.gateway.append.batch.size", unit="{command}",
            description="commands appended in one transaction (group commit)",
            explicit_bucket_boundaries_advisory=BATCH_BUCKETS,
        )  # fmt: skip
        meter.create_observable_counter(
            "certplane.gateway.conflicts", [conflicts], unit="{conflict}",
            description="appends refused on a stream version another gateway had written first"
            " (each retried, deciding again)",
        )  # fmt: skip

    def count_conflicts(self, source: Callable[[], int]) -> None:
        self._conflict_sources.append(source)

    def command(self, command: str, outcome: str, seconds: float) -> None:
        key = (command, outcome)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._seen += 1
        if self._seen % self.DURATION_SAMPLE == 1:
            self._duration.record(
                seconds, {"certplane.command": command, "certplane.outcome": outcome}
            )

    def batch(self, size: int) -> None:
        self._batch.record(size)


_gateway_metrics: GatewayMetrics | None = None


def gateway_metrics() -> GatewayMetrics | None:
    """The process's gateway instruments, or None when metrics are off (the hot path skips
    them). One set per process: an instrument's name can be registered once."""
    global _gateway_metrics
    if _metrics_on and _gateway_metrics is None:
        _gateway_metrics = GatewayMetrics()
    return _gateway_metrics


def router_metrics(
    position: Callable[[], int], hostnames: Callable[[], int], refused: Callable[[], int],
    connections: Callable[[], int],
) -> None:  # fmt: skip
    """A router's convergence as gauges, read at each collection (nothing on the TLS path):
    `certplane.router.config.position` (the ROUTER_CONFIG checkpoint it serves; compare with
    the log head), `.hostnames` served, `.refused` entries NACKed (it serves the previous one)
    and open client `.connections`. Off unless metrics are on."""
    if not _metrics_on:
        return
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation

    meter = metrics.get_meter("certplane")
    gauges = (
        ("certplane.router.config.position", position, "the config checkpoint it serves"),
        ("certplane.router.hostnames", hostnames, "hostnames it serves"),
        ("certplane.router.refused", refused, "config entries it refused (NACKed)"),
        ("certplane.router.connections", connections, "open client connections"),
    )
    for name, read, description in gauges:

        def observe(_: CallbackOptions, read: Callable[[], int] = read) -> Iterator[Observation]:
            yield Observation(read())

        meter.create_observable_gauge(name, [observe], description=description)


EXPIRY_WINDOWS_DAYS = (0, 1, 7, 30)


@dataclass(frozen=True)
class CertificateExpiry:
    """What the `certificates` projection says about expiry, as of its last look."""

    total: int
    within_days: dict[int, int]  # days -> certificates whose not_after is at most that far
    next_expiry: float | None  # Unix time of the earliest not_after, None without certificates


_expiry_sources: list[Callable[[], CertificateExpiry | None]] = []


def certificate_metrics(read: Callable[[], CertificateExpiry | None]) -> None:
    """Certificates about to expire, as cert-manager's operators watch them, but bounded:
    counts per window, not one series per certificate (an app owner's names are not ours to
    put in a monitoring system). `certplane.certificates` (all endpoints),
    `.expiring` by `certplane.within_days` (0: already expired) and `.next_expiry` (Unix
    seconds). Only the leading `certificates` projector reports them."""
    if not _metrics_on:
        return
    _expiry_sources.append(read)
    if len(_expiry_sources) > 1:
        return
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation

    def current() -> Iterator[CertificateExpiry]:
        for source in list(_expiry_sources):
            if (expiry := source()) is not None:
                yield expiry

    def total(_: CallbackOptions) -> Iterator[Observation]:
        yield from (Observation(e.total) for e in current())

    def expiring(_: CallbackOptions) -> Iterator[Observation]:
        for e in current():
            for days, count in e.within_days.items():
                yield Observation(count, {"certplane.within_days": str(days)})

    def next_expiry(_: CallbackOptions) -> Iterator[Observation]:
        yield from (Observation(e.next_expiry) for e in current() if e.next_expiry is not None)

    meter = metrics.get_meter("certplane")
    meter.create_observable_gauge(
        "certplane.certificates", [total], unit="{certificate}",
        description="certificates uploaded (SNI and legacy endpoints), all apps",
    )  # fmt: skip
    meter.create_observable_gauge(
        "certplane.certificates.expiring", [expiring], unit="{certificate}",
        description="certificates expiring within certplane.within_days (0: expired)",
    )  # fmt: skip
    meter.create_observable_gauge(
        "certplane.certificates.next_expiry", [next_expiry], unit="s",
        description="Unix time at which the next certificate expires",
    )  # fmt: skip
