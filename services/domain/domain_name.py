"""Hostnames: normalization to one ASCII form, and SAN matching per RFC 6125.

Custom domains arrive as users type them: mixed case, a trailing dot, unicode (IDN). They
are stored as lower-case A-labels so that one hostname has exactly one spelling in the log.
"""

from __future__ import annotations

import re

import idna

from services.domain.errors import Rejected

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalize_hostname(raw: str) -> str:
    """Return the canonical ASCII hostname or raise `Rejected("invalid_hostname")`."""
    text = raw.strip().rstrip(".").lower()
    if not text:
        raise Rejected(
            "invalid_hostname", "The hostname is empty: pass a name like www.example.com."
        )
    wildcard = text.startswith("*.")
    body = text[2:] if wildcard else text
    try:
        ascii_name = body if body.isascii() else idna.encode(body, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise Rejected(
            "invalid_hostname",
            f"{raw!r} is not a valid internationalized hostname ({e}).",
            hostname=raw,
        ) from e
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or len(labels) < 2 or not all(_LABEL.match(x) for x in labels):
        raise Rejected(
            "invalid_hostname",
            f"{raw!r} is not a valid hostname: use letters, digits and hyphens in dot-separated "
            "labels of at most 63 characters, like www.example.com (a wildcard only as '*.' "
            "at the start).",
            hostname=raw,
        )
    if labels[-1].isdigit():
        raise Rejected(
            "invalid_hostname",
            f"{raw!r} looks like an IP address: custom domains must be DNS names.",
            hostname=raw,
        )
    return ("*." if wildcard else "") + ascii_name


def san_covers(san: str, hostname: str) -> bool:
    """Whether a certificate's DNS SAN covers a hostname (RFC 6125: `*` is one whole label)."""
    san = san.lower().rstrip(".")
    if san == hostname:
        return True
    if san.startswith("*.") and not hostname.startswith("*."):
        head, _, rest = hostname.partition(".")
        return bool(head) and rest == san[2:]
    return False


def covered_by(sans: list[str], hostname: str) -> bool:
    """Whether any of a certificate's SANs covers the hostname."""
    return any(san_covers(s, hostname) for s in sans)


def sni_candidates(server_name: str) -> tuple[str, ...]:
    """The configured names that may serve `server_name`, in order of preference: the name,
    then the wildcard one label up (RFC 6125: a wildcard covers exactly one label)."""
    name = server_name.rstrip(".").lower()
    head, dot, rest = name.partition(".")
    return (name, f"*.{rest}") if dot and rest and head != "*" else (name,)
