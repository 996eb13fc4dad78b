"""Running a service process: logging, SIGTERM/SIGINT to a stop event, a clean exit."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from services.config import ConfigError
from services.health import serve_health
from services.telemetry import setup_metrics, setup_tracing, shutdown_tracing

LOG_FORMATS = ("text", "json")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines (Loki, Elasticsearch, Cloud Logging):
    time (RFC 3339, UTC), level, logger, message, the service and, on errors, the exception."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(service: str = "certplane") -> None:
    """CERTPLANE_LOG_LEVEL (default INFO) and CERTPLANE_LOG_FORMAT (`text` or `json`)."""
    level_name = os.environ.get("CERTPLANE_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if not isinstance(logging.getLevelName(level_name), int):
        raise ConfigError(
            f"CERTPLANE_LOG_LEVEL={level_name!r}: choose DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    log_format = os.environ.get("CERTPLANE_LOG_FORMAT", "text").strip().lower() or "text"
    if log_format not in LOG_FORMATS:
        raise ConfigError(
            f"CERTPLANE_LOG_FORMAT={log_format!r}: choose text or json (one object per line)"
        )
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter(service))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level_name, handlers=[handler])


def tune_gc() -> None:
    """Collect young objects less often: projectors and gateways keep many long-lived state
    objects, and CPython's default thresholds (700) made the cyclic GC rescan them constantly
    (measured: certificates catch-up 50k -> 64k events/s). Reference counting still frees
    everything acyclic at once."""
    gc.set_threshold(100_000, 50, 100)


def run_service(name: str, body: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `body(stop)` until SIGTERM or SIGINT sets `stop`; then it drains and returns."""
    setup_logging(f"certplane-{name}")
    tune_gc()
    setup_tracing(name)
    setup_metrics(name)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        probes = await serve_health()
        try:
            await body(stop)
        finally:
            if probes is not None:
                probes.close()

    try:
        asyncio.run(main())
    finally:
        shutdown_tracing()  # flush the spans still batched
