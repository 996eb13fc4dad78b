"""Audit figures over a large log, in one run:

- raw baseline: read every row in position order through a server-side cursor and decode it
  (msgspec) — what any reader of the log must at least do;
- full replay (`audit:replay`'s fold of every app with the aggregate's evolve, DNS targets
  re-derived) in events/s, and its ratio to the baseline;
- full `audit:verify` (content hash and chain recomputed per row, the RFC 9162 tree grown,
  every signed head checked) in events/s, and its ratio to the baseline; as the command
  does it, chunks of 65,536 events are checked by a worker process per core;
- full replay as `audit:replay` does it (two connections: the next partition of apps is
  read while this one is folded);
- peak resident memory of each, each measured in its own process (verify: the coordinator
  and, beside it, the largest worker's peak, times the number of workers).

The log (default 1,000,000 events) is written with COPY like bench/projections.py; the
sealer then signs a head every 1,000 events (its catch-up rate is reported too).

    .venv/bin/python bench/audit.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.harness import drop_database, machine, scratch_database
from bench.projections import build_log, catch_up
from services.audit.replay import FirstDraws, Moment, app_summary, apps_at, snapshot
from services.audit.verify import verify_database
from services.config import Settings
from services.devcerts import DevCA
from services.domain.dns_target import render
from services.domain.key_envelope import MasterKey
from services.projectors.sealer import SealerProjection
from services.runner import tune_gc
from services.storage.event_log import STORED_COLUMNS, stored_event
from services.storage.row_stream import prefetched_batches

WORKERS = os.cpu_count() or 1  # what `audit:verify` uses


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def phase(name: str, url: str, public_key: str) -> dict[str, float]:
    """One measurement, in this (fresh) process."""
    tune_gc()
    conn = await asyncpg.connect(url)
    started = time.perf_counter()
    try:
        if name == "raw":
            count = 0
            async with conn.transaction(readonly=True):
                query = f"select {STORED_COLUMNS} from events order by position"
                async for records in prefetched_batches(conn, query):
                    for record in records:
                        stored_event(record)
                    count += len(records)
        elif name == "replay":
            # as `audit:replay` does it: a spare connection reads (and PostgreSQL sorts) the
            # next partition of apps while this one is folded
            spare = await asyncpg.connect(url)
            try:
                async with conn.transaction(readonly=True), spare.transaction(readonly=True):
                    snap = await snapshot(conn, Moment(), "certplanedns.example", dns=False)
                    upto, draws, apps = Moment(position=snap.position), FirstDraws(), 0
                    async for app, keys in apps_at(conn, upto, draws=draws, spare=spare):
                        summary = app_summary(
                            app, lambda h, k=keys: render(k[h], "z") if h in k else None
                        )
                        apps += bool(summary)
                    assert draws.exact  # else the exact pass would run (astronomically rare)
            finally:
                await spare.close()
            count = snap.position
        else:
            # as `audit:verify` does it: chunks checked by a worker process per core
            outcome = await verify_database(
                conn, trusted_key=bytes.fromhex(public_key), url=url, workers=WORKERS
            )
            # everything checked; a tail under 1,000 events past the last head is expected here
            assert outcome.problem is None and len(outcome.heads) >= 1, outcome.problem
            count = outcome.events
    finally:
        await conn.close()
    seconds = time.perf_counter() - started
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest one
    return {"events": count, "seconds": seconds, "rate": count / seconds, "peak_mb": peak_mb(),
            "worker_mb": workers, "workers": WORKERS if name == "verify" else 0}  # fmt: skip


def run_phase(name: str, url: str, public_key: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--url", url, "--public-key", public_key],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--phase", choices=["raw", "replay", "verify"])
    parser.add_argument("--url")
    parser.add_argument("--public-key", default="")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(await phase(args.phase, args.url, args.public_key)))
        return

    base = Settings.from_env()
    url = await scratch_database(base.database_url, "bench_audit")
    try:
        ca = DevCA.create("bench")
        count, build_s = await build_log(url, args.events, MasterKey.generate(), ca)
        key = Ed25519PrivateKey.generate()
        sealer = SealerProjection(key, None, "bench.audit.checkpoints", writer_key=None,
                                  every=1000, seconds=3600)  # fmt: skip
        _, seal_s = await catch_up(url, sealer)
        conn = await asyncpg.connect(url)
        await conn.execute("vacuum analyze")  # settle the freshly written tables first,
        await conn.execute("checkpoint")  # so no background flush runs during a phase
        await conn.close()
        public = key.public_key().public_bytes_raw().hex()
        runs: dict[str, list[dict[str, float]]] = {"raw": [], "replay": [], "verify": []}
        for _ in range(2):  # alternated: drift on this shared machine hits all three alike
            for name in runs:
                runs[name].append(run_phase(name, url, public))
    finally:
        await drop_database(url)

    print(f"## Audit — {dt.date.today()}\n")
    print(f"Machine: {machine()}  ")
    print(f"Command: `.venv/bin/python bench/audit.py --events {args.events}`\n")
    print(f"Log: {count:,} events written with COPY in {build_s:.0f} s; the sealer caught up "
          f"in {seal_s:.1f} s ({count / seal_s:,.0f} events/s, a signed head every 1,000).\n")  # fmt: skip
    print("| what | run | events/s | ratio to that run's raw | peak RSS | target |")
    print("|---|---|---|---|---|---|")
    targets = {"raw": "", "replay": "≥ 100,000/s, < 300 MB", "verify": "≥ 0.5 × raw, < 300 MB"}
    for i in range(2):
        raw = runs["raw"][i]["rate"]
        for name, target in targets.items():
            r = runs[name][i]
            label = "raw: cursor read + msgspec decode" if name == "raw" else name
            memory = f"{r['peak_mb']:.0f} MB"
            if r.get("workers"):  # all of them at once: this process and each worker's peak
                memory += f" + {r['workers']:.0f} × {r['worker_mb']:.0f} MB"
            print(f"| {label} | {i + 1} | {r['rate']:,.0f} | {r['rate'] / raw:.2f} | "
                  f"{memory} | {target} |")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
