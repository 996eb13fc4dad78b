"""Hostnames: normalization to one ASCII form, and SAN matching per RFC 6125.

Custom domains arrive as users type them: mixed case, a trailing dot, unicode (IDN). They
are stored as lower-case A-labels so that one hostname has exactly one spelling in the log.
"""

from __future__ import annotations

import re

import idna

from services.domain.errors import Rejected

# What `_problem` accepts, as one expression: two or more labels of letters, digits and inner
# hyphens, each 1-63 long, 253 in all. Nearly every name matches, and skips the label walk.
_PLAIN = re.compile(
    r"(?=.{1,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)


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
    problem = "" if _PLAIN.fullmatch(ascii_name) else _problem(raw.strip(), ascii_name, labels)
    if problem:
        raise Rejected(
            "invalid_hostname",
            f"{raw!r} is not a valid hostname: {problem}.",
            hostname=raw,
        )
    if labels[-1].isdigit():
        raise Rejected(
            "invalid_hostname",
            f"{raw!r} looks like an IP address: custom domains must be DNS names.",
            hostname=raw,
        )
    return ("*." if wildcard else "") + ascii_name


def claimable_hostname(raw: str) -> str:
    """`normalize_hostname` for a name being added to an app: also refused when one of its
    `xn--` labels is no valid A-label. Names already held are looked up with
    `normalize_hostname` alone, so one added before this check stays removable."""
    host = normalize_hostname(raw)
    if "xn--" in host:
        for label in host.split("."):
            if label.startswith("xn--") and not _valid_a_label(label):
                raise Rejected(
                    "invalid_hostname",
                    f"{raw!r} is not a valid hostname: {label!r} is not a valid internationalized"
                    " label (punycode). Type the name as it reads (bücher.example): certplane"
                    " encodes it.",
                    hostname=raw,
                )
    return host


def _valid_a_label(label: str) -> bool:
    """Whether an `xn--` label decodes (RFC 3492) to text that needed the encoding. Undecodable
    punycode, or punycode of plain ASCII or of control characters, is no label anyone can
    register. IDNA2008's code point rules are not applied: names people own (emoji ones,
    under some registries) stay accepted."""
    try:
        text = label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        return False
    return bool(text) and not text.isascii() and text.isprintable()


def _problem(typed: str, name: str, labels: list[str]) -> str:
    """What is wrong with a name, said so that the fix is plain; "" when nothing is."""
    example = "like www.example.com"
    if "://" in typed or "/" in typed:
        host = typed.split("://", 1)[-1].split("/", 1)[0]
        return f"it looks like a URL; pass only the hostname ({host or 'www.example.com'})"
    if re.fullmatch(r"[^:]+:\d+", typed):
        return f"pass the hostname without the port ({typed.rsplit(':', 1)[0]})"
    if len(name) > 253:
        return f"it is {len(name)} characters long; a hostname has at most 253"
    if len(labels) < 2:
        return f"a custom domain has at least two labels, {example} ({name!r} has one)"
    for label in labels:
        if not label:
            return f"it has an empty label (two dots in a row, or a dot at the start); write it {example}"
        if label == "*":
            return "a wildcard may only be the whole first label ('*.example.com')"
        if len(label) > 63:
            return (
                f"the label {label[:20]}... is {len(label)} characters long; a label has at most 63"
            )
        if bad := sorted(set(re.sub(r"[a-z0-9-]", "", label))):
            shown = ", ".join(repr(c) for c in bad)
            return f"it contains {shown}; a hostname has only letters, digits and hyphens"
        if label.startswith("-") or label.endswith("-"):
            return f"the label {label!r} starts or ends with a hyphen"
    return ""


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
