"""Running a service process: logging, SIGTERM/SIGINT to a stop event, a clean exit."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from services.telemetry import setup_metrics, setup_tracing, shutdown_tracing


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("CERTPLANE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def tune_gc() -> None:
    """Collect young objects less often: projectors and gateways keep many long-lived state
    objects, and CPython's default thresholds (700) made the cyclic GC rescan them constantly
    (measured: certificates catch-up 50k -> 64k events/s). Reference counting still frees
    everything acyclic at once."""
    gc.set_threshold(100_000, 50, 100)


def run_service(name: str, body: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `body(stop)` until SIGTERM or SIGINT sets `stop`; then it drains and returns."""
    setup_logging()
    tune_gc()
    setup_tracing(name)
    setup_metrics(name)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await body(stop)

    try:
        asyncio.run(main())
    finally:
        shutdown_tracing()  # flush the spans still batched
