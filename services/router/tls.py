"""The one TLS policy every app gets (as the seed says for SNI: no customization per app).

TLS 1.2 and 1.3 only; for 1.2, ECDHE with AEAD ciphers only (Mozilla's "intermediate"
list); 1.3 suites are OpenSSL's defaults (all AEAD). No compression, no renegotiation,
ALPN http/1.1.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

MODERN = "modern"
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

SniCallback = Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]


def _apply_policy(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def listening_context(sni: SniCallback) -> ssl.SSLContext:
    """The context a listener starts every handshake with: no certificate of its own, so a
    name the SNI callback does not know can only ever get an alert."""
    send_handshake_alerts()
    ctx = _apply_policy(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.sni_callback = sni
    return ctx


def certificate_context(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A context serving one chain (leaf first) and its key; raises ssl.SSLError if they
    do not load. Python's ssl reads certificates only from files: the material goes through
    an anonymous in-memory file (memfd) and never touches a disk."""
    ctx = _apply_policy(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    with _memory_file(chain_pem.rstrip(b"\n") + b"\n" + key_pem) as path:
        ctx.load_cert_chain(path)
    return ctx


def send_handshake_alerts() -> None:
    """Make asyncio send the alert OpenSSL queued when a server handshake fails.

    asyncio's SSLProtocol closes the transport on a failed handshake without flushing the
    outgoing BIO, so a client refused by the SNI callback (unrecognized_name) or for its
    protocol version saw a bare EOF instead of the alert that says why. Flushing first is
    what a TLS server must do (RFC 8446 section 6.2). Idempotent; a no-op if asyncio changes.
    """
    protocol = getattr(asyncio.sslproto, "SSLProtocol", None)
    original = getattr(protocol, "_on_handshake_complete", None)
    if protocol is None or original is None or getattr(original, "_certplane", False):
        return

    def on_handshake_complete(self: Any, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            with contextlib.suppress(Exception):
                self._process_outgoing()
        original(self, handshake_exc)

    on_handshake_complete._certplane = True  # type: ignore[attr-defined]
    protocol._on_handshake_complete = on_handshake_complete


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("certplane-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    # elsewhere: a file only this user can read, in a directory only this user can list,
    # removed as soon as OpenSSL has read it
    with tempfile.TemporaryDirectory(prefix="certplane-tls-") as directory:
        path = os.path.join(directory, "material.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
