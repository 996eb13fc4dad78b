"""Metrics and traces as an operator collects them: scraped by Prometheus's protocol with curl,
pushed over OTLP/HTTP to a collector; and bad telemetry settings refused by name."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from services.config import Settings
from tests.conftest import REPO, certs_add, run_cli
from tests.e2e.conftest import RouterProcess, ServiceProcess, Upstream, wait_for_gateway
from tests.integration.test_projections import poison

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    """GET /metrics with curl and parse the Prometheus text format."""
    out = subprocess.run(
        ["curl", "-sf", "--max-time", "5", f"http://127.0.0.1:{port}/metrics"],
        capture_output=True,
        text=True,
    )
    samples: Samples = {}
    for line in out.stdout.splitlines():
        if match := _SAMPLE.match(line):
            name, labels, value = match.groups()
            pairs = frozenset(
                (k, v) for k, v in _LABEL.findall(labels or "") if not k.startswith("otel_")
            )
            samples[(name, pairs)] = float(value)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def eventually(port: int, check: Callable[[Samples], bool], within: float = 20.0) -> Samples:
    deadline = time.monotonic() + within
    while True:
        samples = scrape(port)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            pytest.fail(f"metrics on :{port} never matched; last scrape: {samples}")
        time.sleep(0.2)


def test_gateway_and_projector_metrics_scraped_show_outcomes_lag_and_a_dead_letter(
    settings: Settings, db_url: str, tmp_path: Path
) -> None:
    gateway_port, projector_port = free_port(), free_port()
    metrics = {"CERTPLANE_METRICS_EXPORT": "prometheus", "CERTPLANE_METRICS_HOST": "127.0.0.1"}
    ServiceProcess(
        settings, ["gateway"], tmp_path / "gateway.log",
        **metrics, CERTPLANE_METRICS_PORT=str(gateway_port),
    ).start()  # fmt: skip
    wait_for_gateway(settings)
    projector = ServiceProcess(
        settings, ["projector", "certificates", "dns_targets"], tmp_path / "projector.log",
        **metrics, CERTPLANE_METRICS_PORT=str(projector_port),
    ).start()  # fmt: skip
    assert run_cli(settings, "apps:create", "demo").returncode == 0
    assert run_cli(settings, "domains:add", "www.demo.test", "-a", "demo").returncode == 0
    assert run_cli(settings, "domains:add", "www.demo.test", "-a", "demo").returncode == 1

    command = "certplane_gateway_commands_total"
    samples = eventually(
        gateway_port,
        lambda s: value(s, command, certplane_command="domain.add", certplane_outcome="domain_exists")
        == 1,
    )  # fmt: skip
    assert (
        value(samples, command, certplane_command="domain.add", certplane_outcome="accepted") == 1
    )
    assert (
        value(samples, command, certplane_command="app.create", certplane_outcome="accepted") == 1
    )
    assert (
        value(samples, "certplane_gateway_append_batch_size_count") == 2
    )  # rejections append nothing
    assert value(samples, "certplane_gateway_conflicts_total") == 0
    fast = value(
        samples, "certplane_gateway_command_duration_seconds_bucket",
        certplane_command="app.create", certplane_outcome="accepted", le="10.0",
    )  # fmt: skip
    assert fast == 1  # seconds, in buckets made for seconds

    certificates = {"certplane_projection": "certificates"}
    state = "certplane_projector_state"
    eventually(
        projector_port,
        lambda s: (
            value(s, "certplane_projector_events_total", **certificates) == 3
            and value(s, "certplane_projector_lag", **certificates) == 0
            and value(s, state, **certificates, certplane_state="running") == 1
        ),
    )

    bad = asyncio.run(poison(db_url))
    stopped = eventually(
        projector_port,
        lambda s: (
            value(s, state, **certificates, certplane_state="stopped") == 1
            and value(s, "certplane_projector_lag", **certificates) == 1
        ),
    )
    assert value(stopped, state, **certificates, certplane_state="running") == 0
    assert value(stopped, "certplane_projector_lag_seconds", **certificates) is not None

    # the form, NAME POSITION: no --reason needed, and the log says none was given
    skip = run_cli(settings, "projections:skip", "certificates", str(bad))
    assert skip.returncode == 0, skip.stderr
    psql = subprocess.run(
        ["psql", db_url, "-Atc", "select data->>'reason' from events where type = 'projection.skipped'"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert psql.stdout.strip() == "no reason given (projections:skip without --reason)"
    eventually(
        projector_port,
        lambda s: (
            value(s, state, **certificates, certplane_state="running") == 1
            and value(s, "certplane_projector_lag", **certificates) == 0
        ),
    )
    assert "metrics for Prometheus at http://127.0.0.1:" in projector.output


def test_certificates_expiring_soon_are_counted_by_window(
    settings: Settings, tmp_path: Path, ca
) -> None:
    port = free_port()
    metrics = {"CERTPLANE_METRICS_EXPORT": "prometheus", "CERTPLANE_METRICS_HOST": "127.0.0.1"}
    ServiceProcess(settings, ["gateway"], tmp_path / "gateway.log").start()
    wait_for_gateway(settings)
    ServiceProcess(
        settings, ["projector", "certificates", "dns_targets"], tmp_path / "projector.log",
        **metrics, CERTPLANE_METRICS_PORT=str(port), CERTPLANE_METRICS_INTERVAL="0.3",
    ).start()  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    for app, days in (("soon", 3), ("later", 20), ("fine", 80)):
        leaf = ca.leaf(f"www.{app}.test", not_after=now + dt.timedelta(days=days))
        files = ca.write(tmp_path / app, leaf)
        assert run_cli(settings, "apps:create", app).returncode == 0
        added = certs_add(settings, files, app, "--bypass")
        assert added.returncode == 0, added.stderr

    def within(s: Samples, days: int) -> float | None:
        return value(s, "certplane_certificates_expiring", certplane_within_days=str(days))

    samples = eventually(port, lambda s: value(s, "certplane_certificates") == 3)
    assert [within(samples, d) for d in (0, 1, 7, 30)] == [0, 0, 1, 2]
    soonest = value(samples, "certplane_certificates_next_expiry_seconds") or 0
    assert abs(soonest - (now + dt.timedelta(days=3)).timestamp()) < 5

    removed = run_cli(settings, "certs:remove", "-a", "soon", "--confirm", "soon")
    assert removed.returncode == 0, removed.stderr
    samples = eventually(port, lambda s: value(s, "certplane_certificates") == 2)
    assert [within(samples, d) for d in (0, 1, 7, 30)] == [0, 0, 0, 1]


def test_a_whole_deployment_exports_what_the_alert_rules_use(
    settings: Settings, tmp_path: Path, upstream: Upstream, files: dict[str, Path]
) -> None:
    """Gateway, projectors and a router, each scraped: the router reports what it serves,
    and every metric docs/prometheus-alerts.yaml names is one of theirs."""
    ports = {name: free_port() for name in ("gateway", "projector", "router")}
    metrics = {"CERTPLANE_METRICS_EXPORT": "prometheus", "CERTPLANE_METRICS_HOST": "127.0.0.1"}

    def on(name: str) -> dict[str, str]:
        return {**metrics, "CERTPLANE_METRICS_PORT": str(ports[name])}

    ServiceProcess(settings, ["gateway"], tmp_path / "gateway.log", **on("gateway")).start()
    wait_for_gateway(settings)
    ServiceProcess(
        settings, ["projector"], tmp_path / "projector.log",
        **on("projector"), CERTPLANE_METRICS_INTERVAL="0.3",
    ).start()  # fmt: skip
    RouterProcess(settings, tmp_path, "router-metrics", upstream.url, **on("router")).start()
    assert run_cli(settings, "apps:create", "demo").returncode == 0
    for host in ("www.example.com", "api.example.com"):
        assert run_cli(settings, "domains:add", host, "-a", "demo").returncode == 0
    added = certs_add(settings, files, "demo")
    assert added.returncode == 0, added.stderr
    samples = eventually(ports["router"], lambda s: value(s, "certplane_router_hostnames") == 2)
    # the log's six events: the app, two domains and their hostname claims, the certificate
    assert value(samples, "certplane_router_config_position") == 6
    assert value(samples, "certplane_router_refused") == 0
    assert value(samples, "certplane_router_connections") == 0

    exported = {name for port in ports.values() for name, _ in scrape(port)}
    eventually(ports["projector"], lambda s: ("certplane_certificates", frozenset()) in s)
    exported |= {name for name, _ in scrape(ports["projector"])}
    rules = (REPO / "docs" / "prometheus-alerts.yaml").read_text()
    named = set()
    for expr in re.findall(r"expr:\s*(?:>-)?(.*?)\n\s+(?:for|labels):", rules, re.S):
        expr = re.sub(r"\{[^}]*\}|\bby \([^)]*\)", "", expr)  # label matchers, groupings
        named |= set(re.findall(r"\bcertplane_[a-z_]+", expr))
    assert len(named) >= 7, named
    assert named <= exported, named - exported


class Collector:
    """An OTLP/HTTP receiver: what an OpenTelemetry Collector would be sent, kept as bytes."""

    def __init__(self) -> None:
        received = self.received = []  # type: ignore[var-annotated]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, self.headers.get("Content-Type", ""), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def metric_names(self) -> set[str]:
        names = set()
        for path, _, body in list(self.received):
            if path == "/v1/metrics":
                request = ExportMetricsServiceRequest.FromString(body)
                for rm in request.resource_metrics:
                    for sm in rm.scope_metrics:
                        names |= {m.name for m in sm.metrics}
        return names

    def spans(self) -> list[tuple[str, str]]:
        """(service.name, span name) of every span received."""
        spans = []
        for path, _, body in list(self.received):
            if path == "/v1/traces":
                for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                    attributes = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        spans += [(attributes["service.name"], s.name) for s in ss.spans]
        return spans


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()
    c.server.server_close()


def test_otlp_carries_metrics_and_sampled_spans_to_a_collector_without_key_material(
    settings: Settings, tmp_path: Path, collector: Collector, files: dict[str, Path]
) -> None:
    gateway = ServiceProcess(
        settings, ["gateway"], tmp_path / "gateway.log",
        CERTPLANE_METRICS_EXPORT="otlp", CERTPLANE_METRICS_INTERVAL="0.3",
        CERTPLANE_TRACE_EXPORT="otlp", CERTPLANE_TRACE_SAMPLE="1",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url, OTEL_BSP_SCHEDULE_DELAY="100",
    ).start()  # fmt: skip
    wait_for_gateway(settings)
    projectors = ["projector", "certificates", "dns_targets"]  # the CLI reads its writes there
    ServiceProcess(settings, projectors, tmp_path / "projector.log").start()
    assert run_cli(settings, "apps:create", "demo").returncode == 0
    added = certs_add(settings, files, "demo", "--bypass")
    assert added.returncode == 0, added.stderr
    deadline = time.monotonic() + 20
    while not (
        {"certplane.gateway.commands", "certplane.gateway.command.duration"}
        <= collector.metric_names()
        and {("certplane-gateway", "app.create"), ("certplane-gateway", "cert.add")}
        <= set(collector.spans())
    ):
        assert time.monotonic() < deadline, (collector.metric_names(), collector.spans())
        time.sleep(0.1)
    assert {ctype for _, ctype, _ in collector.received} == {"application/x-protobuf"}
    gateway.stop()
    key_lines = [ln for ln in files["key"].read_text().splitlines() if "-----" not in ln]
    for _, _, body in collector.received:
        assert b"PRIVATE KEY" not in body
        assert not any(line.encode() in body for line in key_lines)
