"""`certplane dev` runs several services on one host: each gets its own metrics and probe port,
and the banner tells another terminal how to reach them."""

from __future__ import annotations

import pytest

from services.cli.dev import Child, _ports_per_child


def children() -> list[Child]:
    return [Child("gateway", ["gateway"]), Child("router", ["router"])]


def test_each_child_gets_consecutive_ports_for_metrics_and_probes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CERTPLANE_METRICS_EXPORT", "otlp,prometheus")
    monkeypatch.setenv("CERTPLANE_METRICS_PORT", "19000")
    monkeypatch.setenv("CERTPLANE_HEALTH_PORT", "18000")
    kids = children()
    lines = _ports_per_child(kids)
    assert [k.env for k in kids] == [
        {"CERTPLANE_METRICS_PORT": "19000", "CERTPLANE_HEALTH_PORT": "18000"},
        {"CERTPLANE_METRICS_PORT": "19001", "CERTPLANE_HEALTH_PORT": "18001"},
    ]
    assert "http://127.0.0.1:19001/metrics  (router)" in lines[1]
    assert "http://127.0.0.1:18000/readyz  (gateway)" in lines[2]


def test_nothing_is_assigned_when_neither_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTPLANE_METRICS_EXPORT", "console")
    monkeypatch.delenv("CERTPLANE_HEALTH_PORT", raising=False)
    kids = children()
    assert _ports_per_child(kids) == [] and all(k.env == {} for k in kids)


def test_port_0_lets_every_child_pick_a_free_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTPLANE_METRICS_EXPORT", "prometheus")
    monkeypatch.setenv("CERTPLANE_METRICS_PORT", "0")
    monkeypatch.delenv("CERTPLANE_HEALTH_PORT", raising=False)
    kids = children()
    assert all("a free port" in line for line in _ports_per_child(kids))
    assert {k.env["CERTPLANE_METRICS_PORT"] for k in kids} == {"0"}


def test_the_banner_exports_what_the_audit_commands_need(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.cli.dev import _exports
    from services.config import Settings

    monkeypatch.delenv("CERTPLANE_STATE_DIR", raising=False)
    url = "postgresql://postgres@127.0.0.1:5432/elsewhere"
    assert f"  export CERTPLANE_DATABASE_URL={url}" in _exports(Settings(database_url=url))
    secret = _exports(Settings(database_url="postgresql://app:hunter2@db:5432/x"))
    assert not any("hunter2" in line for line in secret)
    assert any("app:***@db" in line for line in secret)
    assert not any("DATABASE_URL" in line for line in _exports(Settings()))
