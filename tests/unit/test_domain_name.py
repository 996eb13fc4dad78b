"""Hostname normalization and RFC 6125 SAN matching, table-driven."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from services.domain.domain_name import (
    _PLAIN,
    _problem,
    claimable_hostname,
    covered_by,
    normalize_hostname,
    san_covers,
)
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
        ("xn--ls8h.la", "xn--ls8h.la"),  # an emoji name: outside IDNA2008, yet registered
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


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("https://shop.example/", "pass only the hostname (shop.example)"),
        ("shop.example:443", "without the port (shop.example)"),
        ("localhost", "at least two labels"),
        ("a..example.com", "empty label"),
        ("www.*.example.com", "wildcard may only be the whole first label"),
        ("a" * 64 + ".example.com", "at most 63"),
        (("a" * 60 + ".") * 5 + "com", "at most 253"),
        ("under_score.example.com", "contains '_'"),
        ("bad-.example.com", "'bad-' starts or ends with a hyphen"),
    ],
)
def test_refusal_names_the_problem(raw: str, says: str) -> None:
    with pytest.raises(Rejected) as e:
        normalize_hostname(raw)
    assert says in e.value.message


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("xn--zz.example.com", "xn--zz"),  # no punycode
        ("www.xn--a-b-c.example", "xn--a-b-c"),
        ("XN--A.example.com", "xn--a"),  # punycode of U+0080, a control character
    ],
)
def test_a_name_being_added_needs_real_a_labels_one_held_is_still_found(
    raw: str, label: str
) -> None:
    with pytest.raises(Rejected) as e:
        claimable_hostname(raw)
    assert f"{label!r} is not a valid internationalized label" in e.value.message
    assert normalize_hostname(raw) == raw.lower()  # added before the check: still removable
    assert claimable_hostname("xn--ls8h.la") == "xn--ls8h.la"  # an emoji name people own


_RFC_1123 = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


@given(st.text(alphabet="ab-_.*:/ 09", max_size=30))
def test_accepts_exactly_the_rfc_1123_names(raw: str) -> None:
    """The precise reasons refuse exactly what one LDH-label pattern refuses."""
    text = raw.strip().rstrip(".")
    body = text[2:] if text.startswith("*.") else text
    labels = body.split(".")
    valid = bool(text) and len(body) <= 253 and len(labels) >= 2
    valid = valid and all(_RFC_1123.fullmatch(x) for x in labels) and not labels[-1].isdigit()
    try:
        normalize_hostname(raw)
    except Rejected:
        assert not valid
    else:
        assert valid


@given(
    st.lists(st.text(alphabet="a0-_", max_size=70), min_size=1, max_size=8).map(".".join)
    | st.lists(st.sampled_from(["a" * 62, "a" * 63, "a" * 64]), min_size=2, max_size=5).map(
        ".".join
    )
)
@example("a." + "b" * 63)
@example("a." + "b" * 64)
@example(".".join(["a" * 63] * 3 + ["b" * 61]))  # 253 characters
@example(".".join(["a" * 63] * 3 + ["b" * 62]))  # 254
def test_the_fast_path_accepts_exactly_what_the_precise_reasons_accept(name: str) -> None:
    """normalize_hostname skips the label walk for names one expression accepts: the two
    must agree, at the label (63) and name (253) limits too."""
    assert bool(_PLAIN.fullmatch(name)) == (_problem(name, name, name.split(".")) == "")
