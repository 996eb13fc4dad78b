"""Hostname normalization and RFC 6125 SAN matching, table-driven."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.domain.domain_name import covered_by, normalize_hostname, san_covers
from services.domain.errors import Rejected


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("WWW.Example.COM", "www.example.com"),
        ("www.example.com.", "www.example.com"),
        ("  api.example.com ", "api.example.com"),
        ("*.example.com", "*.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.c-d.example", "a-b.c-d.example"),
    ],
)
def test_normalizes(raw: str, normal: str) -> None:
    assert normalize_hostname(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "localhost",
        "-bad.example.com",
        "bad-.example.com",
        "a..example.com",
        "www.*.example.com",
        "*",
        "exa mple.com",
        "127.0.0.1",
        "a" * 64 + ".example.com",
        ("a" * 60 + ".") * 5 + "com",
        "under_score.example.com",
    ],
)
def test_refuses(raw: str) -> None:
    with pytest.raises(Rejected) as e:
        normalize_hostname(raw)
    assert e.value.code == "invalid_hostname"


@pytest.mark.parametrize(
    ("san", "host", "covers"),
    [
        ("www.example.com", "www.example.com", True),
        ("WWW.example.com", "www.example.com", True),
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "a.b.example.com", False),  # one label only (RFC 6125 §6.4.3)
        ("*.example.com", "example.com", False),
        ("*.example.com", "*.example.com", True),
        ("www.example.com", "*.example.com", False),
        ("example.com", "www.example.com", False),
    ],
)
def test_san_covers(san: str, host: str, covers: bool) -> None:
    assert san_covers(san, host) is covers


def test_covered_by_any() -> None:
    assert covered_by(["a.example.com", "*.example.org"], "x.example.org")
    assert not covered_by([], "x.example.org")


@given(st.from_regex(r"[a-zA-Z0-9]{1,10}(\.[a-zA-Z0-9]{1,10}){1,3}\.[a-zA-Z]{2,6}", fullmatch=True))
def test_normalization_is_idempotent(raw: str) -> None:
    once = normalize_hostname(raw)
    assert normalize_hostname(once) == once
