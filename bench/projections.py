"""Projection catch-up over a large log, and command-to-router lag, beside their baselines.

One run measures:
- catch-up (a rebuild from position 0, through the real runner code) of each projection over
  a log of N events (default 1,000,000), in events/s, beside the raw baseline of reading the
  same rows with asyncpg, as a rebuild reads them, and decoding every one with msgspec,
  read before and after each catch-up (the faster of its two neighbours is its baseline),
  the whole sequence three times (`--rounds`): each projection's figure is its median round;
- end-to-end lag from a command's accepted reply to the ROUTER_CONFIG KV update a router
  would see, p50/p99, with commands paced at 100/s and 1,000/s, twice: as the client sees
  it (reply received -> watcher woken, both in this process), and by the servers' clocks
  (the event's `recorded_at`, taken inside its append before the commit, -> the time
  JetStream stored the KV entry). On a slow machine the client's loop, sending 1,000
  commands/s and watching, may take a reply after the update it caused (p50 0 ms there);
  the servers' clocks see neither loop, and start before the accepted reply could.
  Beside each rate, the CPU every process spent per command (from /proc: the service
  processes with their children, PostgreSQL's backends, the NATS server, this client): on
  two cores, lag at 1,000/s is mostly waiting for a core.

    .venv/bin/python bench/projections.py [--events 1000000] [--lag-seconds 10] [--rounds 3]

The log is written directly with COPY (hash chain computed here, as the append function
would), because the gateway would take minutes to accept a million events.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu_per_command import backends_of, children, cpu_seconds, processes_named
from bench.harness import drop_database, machine, percentile, scratch_database
from events.app import AppCreated, CreateApp
from events.base import Metadata
from events.codec import COMMAND_REPLY_DECODER, CommandEnvelope, encode
from events.domain import AddDomain, DnsVerified, DomainAdded, HostnameClaimed
from events.endpoint import AddCert, CertAdded, EndpointType
from events.replies import Accepted
from events.union import tag_of
from services.config import Settings
from services.devcerts import DevCA
from services.domain.event_content import event_content
from services.domain.key_envelope import DataKey, MasterKey, public_bytes, seal_for_gateway
from services.domain.x509_bundle import TrustStore, inspect_bundle
from services.projectors import store
from services.projectors.audit import AuditProjection
from services.projectors.certificates import CertificatesProjection
from services.projectors.dns_targets import DnsTargetsProjection
from services.projectors.reader import BatchReader
from services.projectors.router_config import RouterConfigProjection
from services.projectors.runner import REBUILD_BATCH, ProjectorRunner
from services.projectors.service import PROCESS_GROUPS
from services.runner import tune_gc
from services.storage.event_log import stored_event
from services.storage.hash_chain import GENESIS, content_hash, event_hash

REPO = Path(__file__).resolve().parent.parent
DOMAINS_PER_APP = 5  # 1 AppCreated + 5 x (DomainAdded, HostnameClaimed) + CertAdded + DnsVerified


def synthesize(n_events: int, master: MasterKey, ca: DevCA):  # type: ignore[no-untyped-def]
    """Rows for COPY into events, and the wrapped data keys, in log order."""
    leaf = ca.leaf("*.bench.example")
    now = dt.datetime.now(dt.UTC)
    bundle = inspect_bundle(
        [leaf.cert_pem, ca.intermediate.cert_pem], leaf.key_pem, now=now, trust=TrustStore([])
    )
    rows, keys = [], []
    prev, position, app_no = GENESIS, 0, 0
    at = now - dt.timedelta(days=30)
    while position < n_events:
        app = f"a{app_no:07d}"
        command = str(uuid.uuid4())
        meta = encode(
            Metadata(
                command_id=command, actor="bench", correlation_id=command, causation_id=command
            )
        ).decode()
        hosts = [f"h{d}.{app}.bench.example" for d in range(DOMAINS_PER_APP)]
        data_key = DataKey.generate()
        keys.append((uuid.UUID(data_key.key_id), master.key_id, data_key.wrap(master)))
        events = [(f"app-{app}", 1, AppCreated(app=app))]
        for d, host in enumerate(hosts):
            events.append((f"app-{app}", 2 + d, DomainAdded(app=app, hostname=host)))
            events.append((f"hostname-{host}", 1, HostnameClaimed(app=app, hostname=host)))
        events.append(
            (
                f"app-{app}",
                2 + DOMAINS_PER_APP,
                CertAdded(
                    app=app,
                    endpoint=f"troodon-{app_no % 100000:05d}",
                    endpoint_type=EndpointType.SNI,
                    certificate=bundle.facts,
                    chain_pem=bundle.chain_pem,
                    key=data_key.encrypt(bundle.private_key_pem),
                    domains=hosts,
                ),
            )
        )
        events.append(
            (
                f"app-{app}",
                3 + DOMAINS_PER_APP,
                DnsVerified(app=app, hostname=hosts[0], verified=True),
            )
        )
        for index, (stream, version, event) in enumerate(events):
            position += 1
            at += dt.timedelta(microseconds=50)
            event_id = str(uuid.uuid4())
            type_ = tag_of(type(event))
            data = encode(event).decode()
            content = content_hash(
                event_content(stream, event_id, command, index, type_, 1, data), meta
            )
            hashed = event_hash(prev, position, version, at, content)
            rows.append(
                (position, stream, version, uuid.UUID(event_id), uuid.UUID(command), index, type_, 1,
                 data, meta, at, prev, hashed)
            )  # fmt: skip
            prev = hashed
        app_no += 1
    return rows, keys, prev, at


async def build_log(url: str, n_events: int, master: MasterKey, ca: DevCA) -> tuple[int, float]:
    started = time.perf_counter()
    rows, keys, head_hash, head_at = synthesize(n_events, master, ca)
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "events",
            records=rows,
            columns=[
                "position", "stream_id", "stream_version", "event_id", "command_id",
                "command_index", "type", "schema_version", "data", "metadata", "recorded_at",
                "prev_hash", "hash",
            ],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "data_keys", records=keys, columns=["key_id", "master_key_id", "wrapped"]
        )
        await conn.execute(
            "update log_head set position = $1, hash = $2, recorded_at = $3",
            len(rows),
            head_hash,
            head_at,
        )
        await conn.execute("vacuum analyze events")
    finally:
        await conn.close()
    return len(rows), time.perf_counter() - started


async def raw_read(url: str) -> tuple[int, float]:
    """The baseline: every row in position order, read as a rebuild reads them (batches of
    REBUILD_BATCH, the next one prefetched) and decoded, every event, with msgspec.

    Until session 3 this read batches of 1,000 one after the other, as projectors then did;
    that is 1.2-1.5x slower, and comparing a prefetching rebuild with it would flatter it."""
    conn = await asyncpg.connect(url, server_settings={"role": "certplane_service"})
    reader = BatchReader(conn, REBUILD_BATCH, None)
    started, position, count = time.perf_counter(), 0, 0
    try:
        while rows := await reader.after(position):
            events = [stored_event(r) for r in rows]
            count += len(events)
            position = events[-1].position
    finally:
        await conn.close()
    return count, time.perf_counter() - started


async def catch_up(url: str, projection, kv=None) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """Rebuild through the runner's own code path (generation 1 -> 2), timed."""
    runner = ProjectorRunner(projection, url)
    conn = await runner._writer()  # as the projector connects (a projection may configure it)
    reader = await asyncpg.connect(url, server_settings={"role": "certplane_service"})
    runner._reader = BatchReader(reader, runner.batch_size, projection.event_types)
    try:
        generation = await store.live_generation(conn, projection.name)
        schema = store.generation_schema(projection.name, generation)
        if not await conn.fetchval("select 1 from pg_namespace where nspname = $1", schema):
            # (a kept log's live tables may be another build's, of another shape: left alone)
            await store.ensure_tables(conn, projection, generation)
            async with conn.transaction():
                await store.point_views(conn, projection, generation)
        started = time.perf_counter()
        await runner._rebuild_generation(conn, schema)
        return runner.position, time.perf_counter() - started
    finally:
        await reader.close()
        await conn.close()


async def lag(
    base: Settings, rates: list[int], seconds: float, ca: DevCA, *, split: bool
) -> list[str]:
    """Accepted reply -> ROUTER_CONFIG update seen by a KV watcher, with paced commands.

    `split`: the projectors in the processes `certplane dev` uses (PROCESS_GROUPS, router_config
    apart); otherwise all in one `certplane projector` process."""
    tag = secrets.token_hex(4)
    url = await scratch_database(base.database_url, "cpbench_lag")
    master = MasterKey.generate()
    state = Path(f"/tmp/cpbench-lag-{tag}")
    state.mkdir()
    router_file = state / "router.key"
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    router = X25519PrivateKey.generate()
    router_file.write_text(__import__("base64").b64encode(router.private_bytes_raw()).decode())
    audit_file = state / "audit-signing.key"  # the sealer runs too, as in a deployment
    audit_file.write_text(__import__("base64").b64encode(os.urandom(32)).decode())
    prefix = f"lag{tag}"
    bucket = f"ROUTER_CONFIG_{prefix}"
    env = {
        **os.environ,
        "CERTPLANE_DATABASE_URL": url,
        "CERTPLANE_NATS_URL": base.nats_url,
        "CERTPLANE_PREFIX": prefix,
        "CERTPLANE_MASTER_KEY": master.to_text(),
        "CERTPLANE_ROUTER_KEY_FILE": str(router_file),
        "CERTPLANE_AUDIT_KEY_FILE": str(audit_file),
        "CERTPLANE_ROUTER_BUCKET": bucket,
        "CERTPLANE_TRUST_SYSTEM_STORE": "0",
        "CERTPLANE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }
    services = [["gateway"], ["projector"]]
    if split:
        services = [["gateway"], *(["projector", *group] for group in PROCESS_GROUPS)]
    deployment = "router_config apart" if split else "one projector process"
    procs = [
        subprocess.Popen([sys.executable, "-m", "services.cli.main", *args], env=env, cwd=REPO)
        for args in services
    ]
    lines = []
    nc = await nats.connect(base.nats_url)
    try:
        for _ in range(300):
            try:
                gw = await nc.request(f"{prefix}.query._.gateway-key", b"", timeout=0.5)
                break
            except Exception:
                await asyncio.sleep(0.1)
        from events.codec import QUERY_REPLY_DECODER

        gateway_public = QUERY_REPLY_DECODER.decode(gw.data).public_key

        async def command(cmd) -> Accepted:  # type: ignore[no-untyped-def]
            envelope = CommandEnvelope(id=str(uuid.uuid4()), actor="bench", command=cmd)
            msg = await nc.request(f"{prefix}.cmd.{cmd.app}.X", encode(envelope), timeout=30)
            reply = COMMAND_REPLY_DECODER.decode(msg.data)
            assert isinstance(reply, Accepted), reply
            return reply

        apps = [f"lag{i:03d}" for i in range(50)]
        leaf = ca.leaf("*.lag.example")
        sealed = seal_for_gateway(leaf.key_pem, gateway_public)
        for app in apps:
            await command(CreateApp(app=app))
            await command(
                AddCert(
                    app=app,
                    certificates=[leaf.cert_pem, ca.intermediate.cert_pem],
                    key=sealed,
                    bypass=True,
                )
            )
        for _ in range(300):
            try:
                kv = await nc.jetstream().key_value(bucket)
                break
            except Exception:
                await asyncio.sleep(0.1)
        seen: dict[str, float] = {}
        stored: dict[str, dt.datetime] = {}  # JetStream's time of the entry (the server's)

        async def watch() -> None:
            watcher = await kv.watchall(include_history=False)
            async for entry in watcher:
                if entry is not None and entry.key not in seen:
                    seen[entry.key] = time.perf_counter()
                    if entry.created is not None:
                        stored[entry.key] = entry.created  # type: ignore[assignment]

        watching = asyncio.create_task(watch())
        await asyncio.sleep(0.5)
        serial = 0
        database = url.rsplit("/", 1)[1]
        nats_servers = processes_named(b"nats-server")

        def cpu() -> dict[str, float]:
            """CPU seconds so far of each process that serves a command, by role."""
            used = {
                " ".join(args): cpu_seconds(p.pid) + sum(map(cpu_seconds, children(p.pid)))
                for args, p in zip(services, procs, strict=True)
            }
            used["PostgreSQL"] = sum(map(cpu_seconds, backends_of(database)))
            used["NATS server"] = sum(map(cpu_seconds, nats_servers))
            used["client (this process)"] = time.process_time()
            return used

        for rate in rates:
            before, began = cpu(), time.perf_counter()
            accepted: dict[str, float] = {}
            positions: dict[str, int] = {}
            interval = 1.0 / rate
            start = time.perf_counter()
            tasks = []

            async def one(host: str, app: str) -> None:
                reply = await command(AddDomain(app=app, hostname=host))
                accepted[host.replace("*", "_")] = time.perf_counter()
                positions[host.replace("*", "_")] = reply.position

            n = int(rate * seconds)
            for i in range(n):
                target = start + i * interval
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                serial += 1
                app = apps[serial % len(apps)]
                tasks.append(asyncio.create_task(one(f"h{serial}.lag.example", app)))
            await asyncio.gather(*tasks)
            achieved = n / (time.perf_counter() - start)
            deadline = time.perf_counter() + 30
            while any(h not in seen for h in accepted) and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            lags = [max(0.0, seen[h] - t) * 1000 for h, t in accepted.items() if h in seen]
            lines.append(
                f"| lag at {rate:,} commands/s, {deployment}, as the client sees it (achieved"
                f" {achieved:,.0f}/s, {len(lags)} commands) | "
                f"p50 {percentile(lags, 0.5):.1f} ms | p99 {percentile(lags, 0.99):.1f} ms |"
            )
            db = await asyncpg.connect(url)
            try:
                recorded = dict(
                    await db.fetch(
                        "select position, recorded_at from events where position = any($1)",
                        list(positions.values()),
                    )
                )
            finally:
                await db.close()
            server = [
                (stored[h] - recorded[p]).total_seconds() * 1000
                for h, p in positions.items()
                if h in stored
            ]
            lines.append(
                f"| lag at {rate:,} commands/s, {deployment}, by the servers' clocks"
                f" (recorded_at -> stored in the KV; {len(server)} commands) | "
                f"p50 {percentile(server, 0.5):.1f} ms | p99 {percentile(server, 0.99):.1f} ms |"
            )
            after, wall = cpu(), time.perf_counter() - began
            per = ", ".join(
                f"{who} {(after[who] - before[who]) / n * 1e6:,.0f} µs"
                f" ({100 * (after[who] - before[who]) / wall:.0f} %)"
                for who in before
            )  # (backends that left meanwhile are not counted: the services keep theirs)
            lines.append(
                f"| CPU a command at {rate:,}/s, {deployment} (and % of a core; at 100/s"
                f" mostly each batch's fixed cost) | {per} | |"
            )
        watching.cancel()
    finally:
        await nc.close()
        for p in procs:
            p.terminate()
            p.wait(10)
        nc2 = await nats.connect(base.nats_url)
        try:
            await nc2.jetstream().delete_key_value(bucket)
        except Exception:
            pass
        await nc2.close()
        await drop_database(url)
        shutil.rmtree(state, ignore_errors=True)  # the router and audit keys made for the run
    return lines


async def settled(url: str) -> None:
    """Flush what the previous phase left dirty (a CHECKPOINT), so a phase does not pay for
    its predecessor's writes: each catch-up writes ~1M rows, and whichever phase the next
    checkpoint fell in was slowed by it (audit's ratio moved 0.59 -> 0.45 between two runs
    that changed nothing of it). Needs a superuser or pg_checkpoint; skipped without one."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("checkpoint")
    except asyncpg.InsufficientPrivilegeError:
        pass
    finally:
        await conn.close()


async def catch_ups(
    base: Settings, n_events: int, ca: DevCA, rounds: int = 3
) -> tuple[int, list[str]]:
    """Every projection rebuilt over one log, each between two raw reads of it.

    The raw read moves by a third within one run on these machines (267k and 363k events/s
    half a minute apart, same code, same rows: the CPU a row costs moved with it), so a
    catch-up is compared with the raw reads made just before and just after it, the faster
    of the two (ratios are not flattered by a slow phase), rather than with reads made
    before and after all four (session 17).

    The whole sequence runs `rounds` times over the same log, and each projection's figure
    is the median of its rounds, every round's ratio printed beside it: a single round's
    ratio moved by ±0.08 with the machine's phase (session 18)."""
    url = await scratch_database(base.database_url, "cpbench_proj")
    master = MasterKey.generate()
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    router_public = public_bytes(X25519PrivateKey.generate().public_key())
    rates: dict[str, list[float]] = {}
    baselines: dict[str, list[float]] = {}
    raws: list[float] = []

    async def raw() -> float:
        await settled(url)
        rate = count / (await raw_read(url))[1]
        print(f"# raw read: {rate:,.0f} events/s", file=sys.stderr)
        raws.append(rate)
        return rate

    try:
        count, seconds = await build_log(url, n_events, master, ca)
        print(f"# built a log of {count:,} events in {seconds:.0f}s", file=sys.stderr)
        await settled(url)
        before = await raw()
        for _ in range(rounds):
            for projection in (
                CertificatesProjection(),
                DnsTargetsProjection("certplanedns.example"),
                RouterConfigProjection(master, router_public, None),
                AuditProjection(),
            ):
                await settled(url)
                n, s = await catch_up(url, projection)
                assert n == count, (projection.name, n, count)
                rates.setdefault(projection.name, []).append(n / s)
                print(f"# {projection.name}: {n / s:,.0f} events/s", file=sys.stderr)
                after = await raw()
                # the faster of its two neighbours
                baselines.setdefault(projection.name, []).append(max(before, after))
                before = after
    finally:
        await drop_database(url)
    lines = [
        "| raw read + msgspec decode (baseline), before and after each catch-up: "
        + " / ".join(f"{r:,.0f}" for r in raws)
        + f" | {min(raws):,.0f}–{max(raws):,.0f} events/s | 1.00 |"
    ]
    for name, achieved in rates.items():
        ratios = [r / b for r, b in zip(achieved, baselines[name], strict=True)]
        each = " / ".join(f"{r:,.0f} ({q:.2f})" for r, q in zip(achieved, ratios, strict=True))
        lines.append(
            f"| catch-up `{name}`, each round beside the faster of its raw reads: {each}"
            f" | {statistics.median(achieved):,.0f} events/s (median)"
            f" | {statistics.median(ratios):.2f} (median; {min(ratios):.2f}–{max(ratios):.2f}) |"
        )
    return count, lines


async def main() -> None:
    tune_gc()  # as `certplane projector` does
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=["catch-up", "lag"], help="measure one part only")
    parser.add_argument(
        "--rounds", type=int, default=3, help="catch-up sequences over the log (the median)"
    )
    opts = parser.parse_args()
    base = Settings.from_env()
    ca = DevCA.create("bench")
    count, lines, lag_lines = 0, [], []
    if opts.only != "lag":
        count, lines = await catch_ups(base, opts.events, ca, opts.rounds)
    if opts.only != "catch-up":
        for split in (True, False):
            lag_lines += await lag(base, [100, 1000], opts.lag_seconds, ca, split=split)
    print(f"## Projections — {dt.date.today().isoformat()}\n")
    print(f"Machine: {machine()}  ")
    only = f" --only {opts.only}" if opts.only else ""
    only += f" --rounds {opts.rounds}" if opts.rounds != 3 else ""
    print(
        f"Command: `.venv/bin/python bench/projections.py --events {opts.events} --lag-seconds {opts.lag_seconds:g}{only}`\n"
    )
    if lines:
        print(f"Log: {count:,} events ({count // (3 + 2 * DOMAINS_PER_APP):,} apps, each: AppCreated, "
              f"{DOMAINS_PER_APP} × DomainAdded + HostnameClaimed, CertAdded (EC P-256 chain), DnsVerified).\n")  # fmt: skip
        print("| what | rate | ratio to baseline |")
        print("|---|---|---|")
        for line in lines:
            print(line)
        print()
    if lag_lines:
        print("| what | p50 | p99 |")
        print("|---|---|---|")
        for line in lag_lines:
            print(line)


if __name__ == "__main__":
    asyncio.run(main())
