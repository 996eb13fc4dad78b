"""Liveness and readiness over HTTP, for orchestrators (Kubernetes probes, load balancers).

`CERTPLANE_HEALTH_PORT` (off by default) makes a service answer `GET /livez` and
`GET /readyz` on `CERTPLANE_HEALTH_HOST` (default 0.0.0.0). Both are served from the
service's own event loop, so an answer proves the loop is turning: a process that is alive
but stuck does not pass `/livez`. `/readyz` asks each readiness check the service registered
(the gateway: connected to NATS; a router: serving its first full config; projectors: none
failed) and answers 503 with the reasons while any check has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from services.config import ConfigError

log = logging.getLogger("certplane.health")

# Each returns None when ready, else why not (one sentence).
ReadinessCheck = Callable[[], str | None]
_checks: list[ReadinessCheck] = []


def add_readiness_check(check: ReadinessCheck) -> None:
    """Register a check, when probes are on (otherwise nothing holds on to the service)."""
    if os.environ.get("CERTPLANE_HEALTH_PORT", "").strip():
        _checks.append(check)


def not_ready() -> list[str]:
    """The reasons the service is not ready (empty: ready)."""
    reasons = []
    for check in list(_checks):
        try:
            reason = check()
        except Exception as e:  # a check that fails is a reason, not a crash of the probe
            reason = f"a readiness check failed: {e}"
        if reason:
            reasons.append(reason)
    return reasons


def health_port() -> int | None:
    text = os.environ.get("CERTPLANE_HEALTH_PORT", "").strip()
    if not text:
        return None
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(
            f"CERTPLANE_HEALTH_PORT={text!r}: give a TCP port for /livez and /readyz"
            " (0 picks a free one), or leave it unset"
        )
    return port


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        method, path, *_ = [*request.split(b"\r\n", 1)[0].decode("latin-1").split(" "), ""]
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            status, body = "405 Method Not Allowed", "use GET\n"
        elif path == "/livez":
            status, body = "200 OK", "ok\n"
        elif path == "/readyz":
            reasons = not_ready()
            status = "503 Service Unavailable" if reasons else "200 OK"
            body = "".join(f"{r}\n" for r in reasons) or "ok\n"
        else:
            status, body = "404 Not Found", "try /livez or /readyz\n"
        data = body.encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + (data if method != "HEAD" else b"")
        )
        await writer.drain()
    writer.close()


async def serve_health() -> asyncio.Server | None:
    """Start answering probes if CERTPLANE_HEALTH_PORT is set."""
    port = health_port()
    if port is None:
        return None
    host = os.environ.get("CERTPLANE_HEALTH_HOST", "0.0.0.0")
    try:
        server = await asyncio.start_server(_answer, host, port)
    except OSError as e:
        raise ConfigError(
            f"cannot answer health probes on {host}:{port} ({e.strerror}): give each process on"
            " a host its own CERTPLANE_HEALTH_PORT (0 picks a free one)"
        ) from e
    bound = server.sockets[0].getsockname()[1]
    log.info("health probes at http://%s:%d/livez and /readyz", host, bound)
    return server
