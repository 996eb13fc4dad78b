"""Commands per second and latency through the whole command path, beside its baselines.

One run measures, against the same PostgreSQL and NATS, with the same client and concurrency:
- certplane: AddDomain (1, 16, 64 clients) and AddCert (EC P-256, RSA-2048; 64 clients),
  each a NATS request -> gateway (separate process) -> decide -> group-committed append -> reply;
- bare NATS request/reply to an echo responder in a separate Python process;
- single-row INSERT transactions with asyncpg;
- the `eventsourcing` library appending one event per save to the same PostgreSQL.

    .venv/bin/python bench/command_path.py [--seconds 5]

Prints a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import os
import random
import secrets
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Figure, closed_loop, machine, percentile
from events.app import CreateApp
from events.codec import COMMAND_REPLY_DECODER, CommandEnvelope, encode
from events.domain import AddDomain
from events.endpoint import AddCert
from events.replies import Accepted
from services.config import Settings
from services.devcerts import DevCA
from services.domain.ids import TimeOrderedIds
from services.domain.key_envelope import MasterKey, seal_for_gateway
from services.storage.database import _with_database, ensure_database

REPO = Path(__file__).resolve().parent.parent
# Command ids as the `certplane` client makes them (services/cli/client.py): version 7 UUIDs,
# the random bits from the system's CSPRNG.
new_command_id = TimeOrderedIds(random.SystemRandom())

ECHO_SERVER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def echo(msg):
        await msg.respond(msg.data)
    await nc.subscribe(sys.argv[2], queue="echo", cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


async def wait_answering(nc: nats.NATS, subject: str) -> None:
    for _ in range(300):
        try:
            await nc.request(subject, b"", timeout=0.5)
            return
        except Exception:
            await asyncio.sleep(0.1)
    raise TimeoutError(subject)


def eventsourcing_figure(db: str, base: Settings, concurrency: int, seconds: float) -> Figure:
    """The `eventsourcing` library, threads as clients (it is synchronous)."""
    from urllib.parse import urlsplit

    parts = urlsplit(base.database_url)
    os.environ.update(
        PERSISTENCE_MODULE="eventsourcing.postgres",
        POSTGRES_DBNAME=db,
        POSTGRES_HOST=parts.hostname or "127.0.0.1",
        POSTGRES_PORT=str(parts.port or 5432),
        POSTGRES_USER=parts.username or "postgres",
        POSTGRES_PASSWORD=parts.password or "",
        POSTGRES_POOL_SIZE=str(concurrency),
        POSTGRES_MAX_OVERFLOW="0",
        CREATE_TABLE="y",
    )
    from eventsourcing.application import Application

    from bench.es_baseline import BenchApp

    app = Application()
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1, timeout=60)
    deadline = [0.0]

    def client(w: int) -> None:
        agg = BenchApp(f"w{w}")
        app.save(agg)
        barrier.wait()
        i = 0
        mine = []
        while time.perf_counter() < deadline[0]:
            t0 = time.perf_counter()
            agg.add_domain(f"h{i}.w{w}.bench.example")
            app.save(agg)
            mine.append(time.perf_counter() - t0)
            i += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    start_t = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start_t
    app.close()
    return Figure(
        "eventsourcing library (1 event per save)",
        concurrency,
        len(latencies),
        elapsed,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.99) * 1000,
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--only",
        choices=("all", "add-domain", "add-cert"),
        default="all",
        help="run one part (for profiling); the figures for RESULTS.md come from `all`",
    )
    opts = parser.parse_args()
    seconds = opts.seconds
    base = Settings.from_env()
    tag = secrets.token_hex(4)
    db_name, es_db = f"cpbench_{tag}", f"cpbench_es_{tag}"
    db_url = _with_database(base.database_url, db_name)
    await ensure_database(db_url)
    admin = await asyncpg.connect(_with_database(base.database_url, "postgres"))
    await admin.execute(f'create database "{es_db}"')

    ca = DevCA.create("bench")
    ca_file = Path(f"/tmp/cpbench-{tag}-ca.pem")
    ca_file.write_bytes(ca.root.cert_pem)
    master = MasterKey.generate()
    prefix = f"bench{tag}"
    env = {
        **os.environ,
        "CERTPLANE_DATABASE_URL": db_url,
        "CERTPLANE_NATS_URL": base.nats_url,
        "CERTPLANE_PREFIX": prefix,
        "CERTPLANE_MASTER_KEY": master.to_text(),
        "CERTPLANE_EXTRA_CA_FILE": str(ca_file),
        "CERTPLANE_TRUST_SYSTEM_STORE": "0",
        "CERTPLANE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }
    gateway = start([sys.executable, "-m", "services.cli.main", "gateway"], env)
    echo = start([sys.executable, "-c", ECHO_SERVER, base.nats_url, f"{prefix}.echo"], env)
    nc = await nats.connect(base.nats_url, pending_size=64 * 1024 * 1024)
    figures: list[Figure] = []
    second: subprocess.Popen[bytes] | None = None
    try:
        await wait_answering(nc, f"{prefix}.query._.gateway-key")
        await wait_answering(nc, f"{prefix}.echo")

        async def command(cmd: object) -> Accepted:
            envelope = CommandEnvelope(id=new_command_id(), actor="bench", command=cmd)  # type: ignore[arg-type]
            msg = await nc.request(
                f"{prefix}.cmd.{cmd.app}.{type(cmd).__name__}", encode(envelope), timeout=30
            )  # type: ignore[attr-defined]
            reply = COMMAND_REPLY_DECODER.decode(msg.data)
            assert isinstance(reply, Accepted), reply
            return reply

        sample = encode(
            CommandEnvelope(
                id=str(uuid.uuid4()),
                actor="bench",
                command=AddDomain(app="w00001", hostname="h1.w00001.bench.example"),
            )
        )

        async def echo_op(w: int, i: int) -> None:
            await nc.request(f"{prefix}.echo", sample, timeout=30)

        pool = await asyncpg.create_pool(db_url, min_size=64, max_size=64)
        await pool.execute("create table bench_rows (id bigserial primary key, body text not null)")

        async def insert_op(w: int, i: int) -> None:
            await pool.execute("insert into bench_rows (body) values ($1)", sample.decode())

        apps_made: set[int] = set()

        async def ensure_app(w: int) -> str:
            name = f"w{w:05d}"
            if w not in apps_made:
                apps_made.add(w)
                await command(CreateApp(app=name))
            return name

        serial = itertools.count()

        async def add_domain_op(w: int, i: int) -> None:
            app = await ensure_app(w)
            await command(AddDomain(app=app, hostname=f"h{next(serial)}.{app}.bench.example"))

        for concurrency in (1, 16, 64) if opts.only != "add-cert" else ():
            figures.append(
                await closed_loop("bare NATS request/reply (echo)", concurrency, seconds, echo_op)
            )
            figures.append(
                await closed_loop(
                    "asyncpg single-row INSERT transaction", concurrency, seconds, insert_op
                )
            )
            figures.append(
                await asyncio.to_thread(eventsourcing_figure, es_db, base, concurrency, seconds)
            )
            figures.append(
                await closed_loop("certplane AddDomain", concurrency, seconds, add_domain_op)
            )
        # Closed-loop throughput is concurrency / latency: more clients, bigger batches.
        if opts.only != "add-cert":
            figures.append(await closed_loop("certplane AddDomain", 256, seconds, add_domain_op))
        await pool.close()

        gateway_key = (await nc.request(f"{prefix}.query._.gateway-key", b"", timeout=5)).data
        from events.codec import QUERY_REPLY_DECODER

        public = QUERY_REPLY_DECODER.decode(gateway_key).public_key
        cert_runs = [("ec", "EC P-256", 1), ("rsa2048", "RSA-2048", 1)]
        cert_runs += [("ec", "EC P-256", 2), ("rsa2048", "RSA-2048", 2)]
        if opts.only == "add-domain":
            cert_runs = []
        for kind, label, gateways in cert_runs:
            if gateways == 2 and second is None:
                # A second gateway in the queue group: bundle validation is CPU-bound
                # Python, and a second process is how certplane uses a second core.
                second = start([sys.executable, "-m", "services.cli.main", "gateway"], env)
                await asyncio.sleep(2.0)
            leaf = ca.leaf("www.bench.example", key_kind=kind)
            sealed = seal_for_gateway(leaf.key_pem, public)  # sealing is the client's cost
            certificates = [leaf.cert_pem, ca.intermediate.cert_pem]
            offset = {("ec", 1): 20_000, ("rsa2048", 1): 40_000, ("ec", 2): 60_000}.get(
                (kind, gateways), 80_000
            )

            async def add_cert_op(w: int, i: int, _s=sealed, _c=certificates, _o=offset) -> None:
                app = await ensure_app(w + _o)
                await command(AddCert(app=app, certificates=_c, key=_s, bypass=True))

            name = f"certplane AddCert ({label})" + (", 2 gateways" if gateways == 2 else "")
            figures.append(await closed_loop(name, 64, seconds, add_cert_op))
    finally:
        await nc.close()
        for proc in (gateway, echo, second):
            if proc is None:
                continue
            proc.terminate()
            proc.wait(10)
        await admin.execute(f'drop database if exists "{db_name}" with (force)')
        await admin.execute(f'drop database if exists "{es_db}" with (force)')
        await admin.close()
        ca_file.unlink(missing_ok=True)

    def rate(name: str, concurrency: int) -> float:
        return next(
            f.rate for f in figures if f.name.startswith(name) and f.concurrency == concurrency
        )

    if opts.only != "all":
        for f in figures:
            print(f.row())
        return
    small64 = rate("certplane AddDomain", 64)
    print(f"## Command path — {dt.date.today().isoformat()}\n")
    print(f"Machine: {machine()}  ")
    print(f"Command: `.venv/bin/python bench/command_path.py --seconds {seconds:g}`\n")
    print("| what | clients | rate | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for f in figures:
        print(f.row())
    print()
    print(
        f"- AddDomain @64 / bare NATS echo @64: **{small64 / rate('bare NATS', 64):.2f}** (target ≥ 0.35)"
    )
    print(
        f"- AddDomain @64 / eventsourcing @64: **{small64 / rate('eventsourcing', 64):.1f}×** (target ≥ 2×)"
    )
    print(f"- AddDomain @64 / INSERT @64: {small64 / rate('asyncpg single-row', 64):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
