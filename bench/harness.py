"""Shared benchmark machinery: closed-loop load with N concurrent clients, percentiles, a
machine description. Figures are ratios against baselines measured in the same run."""

from __future__ import annotations

import asyncio
import os
import platform
import secrets
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass
class Figure:
    name: str
    concurrency: int
    count: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def row(self) -> str:
        return (
            f"| {self.name} | {self.concurrency} | {self.rate:,.0f}/s | "
            f"{self.p50_ms:.2f} | {self.p99_ms:.2f} |"
        )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(
    name: str,
    concurrency: int,
    seconds: float,
    op: Callable[[int, int], Awaitable[None]],
    *,
    warmup: float = 0.5,
) -> Figure:
    """`concurrency` workers each call `op(worker, i)` back to back for `seconds`."""
    latencies: list[float] = []
    measuring = False
    stop_at = 0.0

    async def worker(w: int) -> None:
        i = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            await op(w, i)
            i += 1
            if measuring:
                latencies.append(time.perf_counter() - t0)

    stop_at = time.perf_counter() + warmup
    await asyncio.gather(*(worker(w) for w in range(concurrency)))  # warm-up round
    latencies.clear()
    measuring = True
    start = time.perf_counter()
    stop_at = start + seconds
    # new worker ids so ops that create things do not collide with the warm-up's
    await asyncio.gather(*(worker(w + 10_000) for w in range(concurrency)))
    elapsed = time.perf_counter() - start
    return Figure(
        name,
        concurrency,
        len(latencies),
        elapsed,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.99) * 1000,
    )


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pg = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"{os.cpu_count()} vCPU ({cpu}), {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
        f"Python {platform.python_version()}, {pg or 'PostgreSQL'}, "
        f"CPython speed {python_speed():.0f} M loop steps/s"
    )


def python_speed() -> float:
    """Millions of `for` loop additions per second: compares machines for absolute figures.

    Machines of the same kind here differ a lot (the raw read-and-decode baseline of
    bench/projections.py measured 236k events/s on one, 40-57k on another); ratios within
    one run do not care, figures in events/s do.
    """
    best = float("inf")
    for _ in range(3):
        started, total = time.perf_counter(), 0
        for i in range(2_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return 2.0 / best


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}"


async def scratch_database(base_url: str, prefix: str) -> str:
    """A fresh, migrated database for one benchmark run; its URL. Drop it with
    `drop_database` whatever happens."""
    from services.storage.database import _with_database, ensure_database

    url = _with_database(base_url, f"{prefix}_{secrets.token_hex(4)}")
    await ensure_database(url)
    return url


async def drop_database(url: str) -> None:
    import asyncpg

    from services.storage.database import _with_database, database_name

    admin = await asyncpg.connect(_with_database(url, "postgres"))
    try:
        await admin.execute(f'drop database if exists "{database_name(url)}" with (force)')
    finally:
        await admin.close()
