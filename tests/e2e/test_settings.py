"""Settings an operator got wrong: the service stops at once, exit 2, naming the variable."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from services.config import Settings
from tests.conftest import run_cli
from tests.e2e.conftest import ServiceProcess, wait_for_gateway


@pytest.mark.parametrize(
    ("service", "env", "names"),
    [
        ("gateway", {"CERTPLANE_METRICS_EXPORT": "statsd"}, ["CERTPLANE_METRICS_EXPORT", "prometheus"]),
        ("gateway", {"CERTPLANE_TRACE_EXPORT": "jaeger"}, ["CERTPLANE_TRACE_EXPORT", "otlp"]),
        ("projector", {"CERTPLANE_METRICS_EXPORT": "prometheus", "CERTPLANE_METRICS_PORT": "http"},
         ["CERTPLANE_METRICS_PORT", "0 picks a free one"]),
        ("gateway", {"CERTPLANE_LOG_LEVEL": "LOUD"}, ["CERTPLANE_LOG_LEVEL", "WARNING"]),
        ("projector", {"CERTPLANE_LOG_FORMAT": "xml"}, ["CERTPLANE_LOG_FORMAT", "json"]),
        ("gateway", {"CERTPLANE_BUNDLE_WORKERS": "many"}, ["CERTPLANE_BUNDLE_WORKERS", "auto"]),
        ("projector", {"CERTPLANE_AUDIT_SEAL_EVERY": "0"}, ["CERTPLANE_AUDIT_SEAL_EVERY", "at least 1"]),
        ("projector", {"CERTPLANE_AUDIT_SEAL_SECONDS": "soon"}, ["CERTPLANE_AUDIT_SEAL_SECONDS", "a number"]),
        ("gateway", {"CERTPLANE_MASTER_KEY": "", "CERTPLANE_MASTER_KEY_FILE": "/nonexistent/master.key"},
         ["no master key", "CERTPLANE_MASTER_KEY"]),
        ("gateway", {"CERTPLANE_TRUST_SYSTEM_STORE": "nein"}, ["CERTPLANE_TRUST_SYSTEM_STORE", "1 or 0"]),
        ("gateway", {"CERTPLANE_EXTRA_CA_FILE": "/nonexistent/ca.pem"},
         ["CERTPLANE_EXTRA_CA_FILE", "/nonexistent/ca.pem", "cannot be read"]),
        ("gateway", {"CERTPLANE_EXTRA_CA_FILE": str(Path(__file__))},
         ["CERTPLANE_EXTRA_CA_FILE", "holds no PEM certificate"]),
    ],
)  # fmt: skip
def test_a_bad_setting_exits_2_naming_it_without_a_traceback(
    settings: Settings, service: str, env: dict[str, str], names: list[str]
) -> None:
    args = ["certificates"] if service == "projector" else []
    result = run_cli(settings, service, *args, **env)
    assert result.returncode == 2, result.stderr
    assert all(name in result.stderr for name in names), result.stderr
    assert "Traceback" not in result.stderr


def test_an_extra_ca_file_with_a_broken_certificate_is_refused(
    settings: Settings, tmp_path: Path
) -> None:
    good = Path(settings.extra_ca_file).read_text()
    broken = good.replace("MII", "MIX", 1)  # the DER inside no longer parses
    bundle = tmp_path / "roots.pem"
    bundle.write_text(good + broken)
    result = run_cli(settings, "gateway", CERTPLANE_EXTRA_CA_FILE=str(bundle))
    assert result.returncode == 2, result.stderr
    assert f"certificate 2 of {bundle} does not parse" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_metrics_port_in_use_is_refused_by_name(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            settings, "projector", "certificates",
            CERTPLANE_METRICS_EXPORT="prometheus", CERTPLANE_METRICS_HOST="127.0.0.1",
            CERTPLANE_METRICS_PORT=str(port),
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "CERTPLANE_METRICS_PORT" in result.stderr and "Traceback" not in result.stderr


def test_json_logs_are_one_object_per_line(settings: Settings, tmp_path: Path) -> None:
    gateway = ServiceProcess(
        settings, ["gateway"], tmp_path / "gateway.log", CERTPLANE_LOG_FORMAT="json"
    ).start()
    wait_for_gateway(settings)
    assert run_cli(settings, "apps:create", "demo").returncode == 0
    assert run_cli(settings, "apps:create", "demo").returncode == 1  # logged: app_exists
    assert gateway.stop() == 0
    entries = [json.loads(line) for line in gateway.output.splitlines() if line.strip()]
    assert {e["service"] for e in entries} == {"certplane-gateway"}
    assert all(e["time"].endswith("+00:00") and e["level"] in ("INFO", "WARNING") for e in entries)
    rejected = [e for e in entries if "rejected: app_exists" in e["message"]]
    assert len(rejected) == 1 and rejected[0]["logger"] == "certplane.gateway", entries


@pytest.mark.parametrize("service", ["gateway", "projector"])
def test_a_database_an_older_release_migrated_is_refused_by_name(
    settings: Settings, db_url: str, service: str
) -> None:
    import subprocess

    subprocess.run(
        ["psql", db_url, "-qc", "delete from schema_migrations where version = 9"], check=True
    )  # as if the last `certplane migrate` was an older release's
    result = run_cli(settings, service, *(["certificates"] if service == "projector" else []))
    assert result.returncode == 2, result.stderr
    assert "lacks migration(s) 009_projection_versions.sql" in result.stderr
    assert "certplane migrate" in result.stderr and "Traceback" not in result.stderr
