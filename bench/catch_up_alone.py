"""Catch-ups measured alone on a log that is built once and kept, for A/B tests of projections.

`bench/projections.py` builds a fresh 1M-event log every run (a minute or more here); to
compare two versions of a projection, alternate them on one kept log instead:

    .venv/bin/python bench/catch_up_alone.py                       # raw read + every catch-up
    .venv/bin/python bench/catch_up_alone.py raw certificates     # some of them
    .venv/bin/python bench/catch_up_alone.py --drop                # remove the kept log

Each line also gives the wall time and the CPU seconds of this process and of PostgreSQL's
backends over it: which side a catch-up waits on (a CHECKPOINT runs before each, so none pays
for the previous one's writes).

The log lives in the database `cpbench_kept` (next to CERTPLANE_DATABASE_URL's) and its
master key in `$TMPDIR/cpbench_kept.master` (router_config unwraps the log's data keys with
it). Like `certplane projector` and the benchmark, it runs with `tune_gc()`: without it the
cyclic GC dominates a catch-up (certificates 19k instead of 33k events/s here).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bench.cpu_per_command import backends_of, cpu_seconds
from bench.projections import (
    AuditProjection,
    CertificatesProjection,
    DnsTargetsProjection,
    RouterConfigProjection,
    build_log,
    catch_up,
    raw_read,
    settled,
)
from services.config import Settings
from services.devcerts import DevCA
from services.domain.key_envelope import MasterKey, public_bytes
from services.runner import tune_gc
from services.storage.database import _with_database, ensure_database

KEPT = "cpbench_kept"
KEY_FILE = Path(tempfile.gettempdir()) / f"{KEPT}.master"
CHOICES = ("raw", "certificates", "dns_targets", "router_config", "audit")


def projection(name: str, master: MasterKey):  # type: ignore[no-untyped-def]
    match name:
        case "certificates":
            return CertificatesProjection()
        case "dns_targets":
            return DnsTargetsProjection("certplanedns.example")
        case "router_config":
            router_public = public_bytes(X25519PrivateKey.generate().public_key())
            return RouterConfigProjection(master, router_public, None)
        case "audit":
            return AuditProjection()
    raise ValueError(name)


_SEEN: dict[str, float] = {}  # backend pid -> CPU seconds when last seen


async def _backend_cpu() -> None:
    """Sample the kept log's backends' CPU (4 times a second: the sampling runs in the
    measured process) until cancelled; a backend's last 0.25 s may be missed."""
    while True:
        for pid in backends_of(KEPT):
            _SEEN[pid] = cpu_seconds(pid) or _SEEN.get(pid, 0.0)
        await asyncio.sleep(0.25)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="*", help=f"any of {', '.join(CHOICES)} (default: all)")
    parser.add_argument("--events", type=int, default=1_000_000, help="size of a new kept log")
    parser.add_argument("--drop", action="store_true", help="drop the kept log and stop")
    opts = parser.parse_args()
    if unknown := [w for w in opts.what if w not in CHOICES]:
        parser.error(f"unknown: {', '.join(unknown)}; choose from {', '.join(CHOICES)}")
    tune_gc()
    base = Settings.from_env()
    url = _with_database(base.database_url, KEPT)
    if opts.drop:
        admin = await asyncpg.connect(_with_database(base.database_url, "postgres"))
        await admin.execute(f'drop database if exists "{KEPT}" with (force)')
        await admin.close()
        KEY_FILE.unlink(missing_ok=True)
        return
    if not KEY_FILE.exists():
        await ensure_database(url)
        master = MasterKey.generate()
        count, seconds = await build_log(url, opts.events, master, DevCA.create("bench"))
        KEY_FILE.write_text(master.to_text())
        KEY_FILE.chmod(0o600)
        print(f"# kept a log of {count:,} events in {KEPT} ({seconds:.0f} s)", flush=True)
    master = MasterKey.from_text(KEY_FILE.read_text())
    for name in opts.what or CHOICES:
        await settled(url)
        python = cpu_seconds(os.getpid())
        watching = asyncio.ensure_future(_backend_cpu())
        if name == "raw":
            count, seconds = await raw_read(url)
        else:
            count, seconds = await catch_up(url, projection(name, master))
        python = cpu_seconds(os.getpid()) - python
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        backends = sum(_SEEN.values())
        _SEEN.clear()
        # Which side a catch-up waits on: CPU seconds of this process and of PostgreSQL's
        # backends (reading, writing, folding) beside the wall time.
        print(
            f"{name:14s} {count / seconds:9,.0f} events/s  ({seconds:.1f} s; CPU: Python"
            f" {python:.1f} s, PostgreSQL ~{backends:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
