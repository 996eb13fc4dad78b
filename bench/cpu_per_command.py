"""CPU each process spends per AddDomain (or AddCert), for A/B tests of the command path.

Closed-loop throughput on this kind of 2-vCPU machine drifts by a third between runs (the
machine has fast and slow phases), so comparing two versions of the gateway by their rates
needs many alternated runs. The CPU each process spends per command (read from /proc over
the same window as the commands counted) moves much less, and says which process a change
helped. Also reports the mean group-commit batch (distinct `recorded_at` per batch), and
how busy the gateway was: its CPU seconds over the window's wall seconds. That share follows
the pipeline's shape, not the machine's speed (session 20: 0.58-0.64 for every variant of
the group commit tried, while rates of the same code moved 30 %), so it is the figure to
compare when a change is meant to keep the gateway busier.

    .venv/bin/python bench/cpu_per_command.py [--clients 64] [--seconds 8]
        [--command add-domain|add-cert-ec|add-cert-rsa] [--gateways N] [--apps N]
        [--gateway-command bench/lean_gateway.py | bench/gateway_trace.py]

Alternate old and new code (`git stash` / `git stash pop` between runs), two runs each at
least. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.command_path import new_command_id, start, wait_answering
from bench.harness import closed_loop, drop_database, scratch_database
from events.app import CreateApp
from events.codec import COMMAND_REPLY_DECODER, QUERY_REPLY_DECODER, CommandEnvelope, encode
from events.domain import AddDomain
from events.endpoint import AddCert
from events.replies import Accepted
from services.config import Settings
from services.devcerts import DevCA
from services.domain.key_envelope import MasterKey, seal_for_gateway
from services.storage.database import database_name

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def children(pid: int) -> list[str]:
    """A process's children (a gateway's bundle workers), whose CPU counts as the gateway's."""
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def backends_of(database: str) -> list[str]:
    """PIDs of the PostgreSQL backends connected to `database` (by their process title)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"postgres:") and f" {database} ".encode() in title:
            pids.append(pid)
    return pids


def processes_named(name: bytes) -> list[str]:
    """PIDs whose executable is `name` (the local NATS server, when there is one)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if argv0.rsplit(b"/", 1)[-1] == name:
            pids.append(pid)
    return pids


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--command", choices=("add-domain", "add-cert-ec", "add-cert-rsa"), default="add-domain"
    )
    parser.add_argument("--gateways", type=int, default=1, help="processes in the queue group")
    parser.add_argument(
        "--apps", type=int, default=0, help="apps the clients share (default: one app each)"
    )
    parser.add_argument(
        "--gateway-command",
        default="-m services.cli.main gateway",
        help="what Python runs as the gateway (an experiment: bench/lean_gateway.py)",
    )
    opts = parser.parse_args()
    base = Settings.from_env()
    url = await scratch_database(base.database_url, "cpbench_cpu")
    prefix = f"cpu{secrets.token_hex(4)}"
    ca = DevCA.create("bench")
    ca_file = Path(f"/tmp/{prefix}-ca.pem")
    ca_file.write_bytes(ca.root.cert_pem)
    trace_file = Path(f"/tmp/{prefix}-trace.txt")
    env = {
        **os.environ,
        "CERTPLANE_DATABASE_URL": url,
        "CERTPLANE_NATS_URL": base.nats_url,
        "CERTPLANE_PREFIX": prefix,
        "CERTPLANE_MASTER_KEY": MasterKey.generate().to_text(),
        "CERTPLANE_EXTRA_CA_FILE": str(ca_file),
        "CERTPLANE_TRUST_SYSTEM_STORE": "0",
        "CERTPLANE_LOG_LEVEL": "WARNING",
        "CERTPLANE_TRACE_OUT": str(trace_file),  # bench/gateway_trace.py writes it
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    gateways = [
        start([sys.executable, *opts.gateway_command.split()], env) for _ in range(opts.gateways)
    ]
    nc = await nats.connect(base.nats_url)
    try:
        await wait_answering(nc, f"{prefix}.query._.gateway-key")
        await asyncio.sleep(1.0 if opts.gateways > 1 else 0)  # the others subscribe too

        async def command(cmd: CreateApp | AddDomain | AddCert) -> None:
            envelope = CommandEnvelope(id=new_command_id(), actor="bench", command=cmd)
            msg = await nc.request(
                f"{prefix}.cmd.{cmd.app}.{type(cmd).__name__}", encode(envelope), timeout=30
            )
            reply = COMMAND_REPLY_DECODER.decode(msg.data)
            assert isinstance(reply, Accepted), reply

        serial = itertools.count()
        done = [0]

        created: dict[int, asyncio.Task[None]] = {}

        async def app_of(w: int) -> str:
            w = w % opts.apps if opts.apps else w
            app = f"w{w:05d}"
            if w not in created:  # clients sharing an app wait for its creation
                created[w] = asyncio.ensure_future(command(CreateApp(app=app)))
            await created[w]
            return app

        async def add_domain(w: int, i: int) -> None:
            app = await app_of(w)
            await command(AddDomain(app=app, hostname=f"h{next(serial)}.{app}.bench.example"))
            done[0] += 1

        operation = add_domain
        if opts.command != "add-domain":
            public = QUERY_REPLY_DECODER.decode(
                (await nc.request(f"{prefix}.query._.gateway-key", b"", timeout=5)).data
            ).public_key
            kind = "ec" if opts.command == "add-cert-ec" else "rsa2048"
            leaf = ca.leaf("www.bench.example", key_kind=kind)
            sealed = seal_for_gateway(leaf.key_pem, public)
            chain = [leaf.cert_pem, ca.intermediate.cert_pem]

            async def add_cert(w: int, i: int) -> None:
                app = await app_of(w)
                await command(AddCert(app=app, certificates=chain, key=sealed, bypass=True))
                done[0] += 1

            operation = add_cert

        # A NATS server on this machine is counted too (shared with whatever else uses it).
        nats_servers = processes_named(b"nats-server")

        def sample() -> tuple[float, float, float, int, float, float]:
            backends = backends_of(database_name(url))
            return (
                sum(cpu_seconds(pid) for g in gateways for pid in (g.pid, *children(g.pid))),
                sum(cpu_seconds(p) for p in backends),
                cpu_seconds(os.getpid()),
                done[0],
                time.perf_counter(),
                sum(cpu_seconds(p) for p in nats_servers),
            )

        async def window() -> tuple[tuple[float, ...], tuple[float, ...]]:
            await asyncio.sleep(1.5)  # past the warm-up and the first apps' creation
            first = sample()
            await asyncio.sleep(opts.seconds - 2.0)
            return first, sample()

        measuring = asyncio.create_task(window())
        figure = await closed_loop(opts.command, opts.clients, opts.seconds, operation)
        first, last = await measuring
        n = last[3] - first[3]
        conn = await asyncpg.connect(url)
        batches, commands = await conn.fetchrow(
            "select count(distinct recorded_at), count(distinct command_id) from events"
        )
        await conn.close()
    finally:
        await nc.close()
        for gateway in gateways:  # all of them first: a failed run leaves commands in flight
            gateway.terminate()
        for gateway in gateways:
            try:
                gateway.wait(10)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait()
        await drop_database(url)
        ca_file.unlink(missing_ok=True)

    def per_command(index: int) -> str:
        return f"{(last[index] - first[index]) / n * 1e6:.0f} µs"

    print(
        f"{opts.command} @{opts.clients}: {figure.rate:,.0f}/s (p50 {figure.p50_ms:.1f} ms,"
        f" p99 {figure.p99_ms:.1f} ms); CPU per command: gateway{'s' if opts.gateways > 1 else ''} {per_command(0)},"
        f" PostgreSQL {per_command(1)}, client {per_command(2)}"
        + (f", NATS server {per_command(5)}" if nats_servers else "")
        + f"; mean batch {commands / batches:.1f} commands;"
        f" gateway busy {(last[0] - first[0]) / (last[4] - first[4]):.2f} of a core"
    )
    if trace_file.exists():
        print(trace_file.read_text().strip())
        trace_file.unlink()


if __name__ == "__main__":
    asyncio.run(main())
