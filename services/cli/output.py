"""How the CLI prints: Heroku-like tables and certificate blocks, or JSON with --json."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Sequence

import msgspec

from events.endpoint import CertificateFacts


def when(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def ago(then: dt.datetime, now: dt.datetime) -> str:
    seconds = max(int((now - then).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds}s ago"
    return f"{seconds // 60}m ago" if seconds < 7200 else f"{seconds // 3600}h ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
        "  ".join("─" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def certificate_details(facts: CertificateFacts) -> str:
    names = ", ".join(facts.sans) or facts.common_name
    lines = [
        "Certificate details:",
        f"Common Name(s): {names}",
        f"Expires At:     {when(facts.not_after)}",
        f"Issuer:         {facts.issuer}",
        f"Starts At:      {when(facts.not_before)}",
        f"Subject:        {facts.subject}",
        f"Key:            {facts.key_type} {facts.key_bits} bits",
        f"Fingerprint:    SHA256 {facts.fingerprint_sha256}",
    ]
    if facts.self_signed:
        lines.append("SSL certificate is self signed.")
    elif facts.trusted:
        lines.append("SSL certificate is verified by a root authority.")
    else:
        lines.append("SSL certificate is not trusted.")
        lines.append(untrusted_hint(facts))
    return "\n".join(lines)


def untrusted_hint(facts: CertificateFacts) -> str:
    """Why a chain may not be trusted, from what the bundle held (the usual fix first)."""
    if not facts.sans:
        return (
            "It names no DNS names (no subjectAltName), and clients ignore the Common Name: "
            "ask the certificate authority for one that lists the hostnames as SANs."
        )
    if len(facts.chain_fingerprints) == 1:
        return (
            "The bundle has no intermediate certificates: if your certificate authority sent "
            "any, pass them too (certs:update INTERMEDIATE... CRT KEY)."
        )
    return (
        "Its chain does not reach a root this platform trusts: check that every intermediate "
        "is there (certs:chain FILES...), or, for a private CA, ask the operator to trust its root."
    )


def print_json(value: object) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


def warn(message: str) -> None:
    """Each line marked, as Heroku marks a warning's lines."""
    sys.stderr.write("".join(f" ▸    {line}\n" for line in message.splitlines() or [""]))
