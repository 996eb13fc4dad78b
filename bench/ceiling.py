"""How close to the echo target any gateway built from certplane's parts can come.

Issue 2 asks for AddDomain @64 at 0.35 of a bare NATS echo's rate. This measures, in one
run and alternated round by round (the machine's speed drifts by a third within minutes),
three things with the same client and 64 concurrent requests:
- the bare NATS request/reply echo (`command_path.ECHO_SERVER`);
- AddDomain through `bench/lean_gateway.py`: the least a gateway can do with the product's
  own decide, sealing, hash chain, append function and reply (no idempotency look-ups,
  retries, per-app order, announcements, spans): a ceiling for any restructuring of the
  real gateway's hot path;
- AddDomain through the real gateway (`certplane gateway`).
Each gateway has its own database and subject prefix. Prints a Markdown table for
bench/RESULTS.md.

    .venv/bin/python bench/ceiling.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.command_path import ECHO_SERVER, REPO, new_command_id, start, wait_answering
from bench.harness import Figure, closed_loop, drop_database, machine, scratch_database
from events.app import CreateApp
from events.codec import COMMAND_REPLY_DECODER, CommandEnvelope, encode
from events.domain import AddDomain
from events.replies import Accepted
from services.config import Settings
from services.domain.key_envelope import MasterKey

CLIENTS = 64
GATEWAYS = {
    "lean loop (bench/lean_gateway.py)": [sys.executable, "bench/lean_gateway.py"],
    "certplane gateway": [sys.executable, "-m", "services.cli.main", "gateway"],
}


def gateway_env(base: Settings, url: str, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "CERTPLANE_DATABASE_URL": url,
        "CERTPLANE_NATS_URL": base.nats_url,
        "CERTPLANE_PREFIX": prefix,
        "CERTPLANE_MASTER_KEY": MasterKey.generate().to_text(),
        "CERTPLANE_TRUST_SYSTEM_STORE": "0",
        "CERTPLANE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }


def add_domain_op(nc: NATS, prefix: str) -> Callable[[int, int], Awaitable[None]]:
    """AddDomain on the worker's own app (created on its first use), as command_path does."""
    serial = itertools.count()
    apps: set[str] = set()

    async def command(cmd: CreateApp | AddDomain) -> None:
        envelope = CommandEnvelope(id=new_command_id(), actor="bench", command=cmd)
        msg = await nc.request(
            f"{prefix}.cmd.{cmd.app}.{type(cmd).__name__}", encode(envelope), timeout=30
        )
        reply = COMMAND_REPLY_DECODER.decode(msg.data)
        assert isinstance(reply, Accepted), reply

    async def op(w: int, i: int) -> None:
        app = f"w{w:05d}"
        if app not in apps:
            apps.add(app)
            await command(CreateApp(app=app))
        await command(AddDomain(app=app, hostname=f"h{next(serial)}.{app}.bench.example"))

    return op


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    opts = parser.parse_args()
    base = Settings.from_env()
    tag = secrets.token_hex(4)
    echo_subject = f"ceiling{tag}.echo"
    env = gateway_env(base, base.database_url, f"ceiling{tag}")
    procs: list[subprocess.Popen[bytes]] = [
        start([sys.executable, "-c", ECHO_SERVER, base.nats_url, echo_subject], env)
    ]
    urls: list[str] = []
    nc = await nats.connect(base.nats_url, pending_size=64 * 1024 * 1024)
    rounds: list[list[Figure]] = []
    try:
        ops: dict[str, Callable[[int, int], Awaitable[None]]] = {}
        for n, (name, argv) in enumerate(GATEWAYS.items()):
            url = await scratch_database(base.database_url, "cpbench_ceiling")
            urls.append(url)
            prefix = f"ceiling{tag}g{n}"
            procs.append(start(argv, gateway_env(base, url, prefix)))
            await wait_answering(nc, f"{prefix}.query._.gateway-key")
            ops[name] = add_domain_op(nc, prefix)
        await wait_answering(nc, echo_subject)
        sample = encode(
            CommandEnvelope(
                id=new_command_id(),
                actor="bench",
                command=AddDomain(app="w00001", hostname="h1.w00001.bench.example"),
            )
        )

        async def echo_op(w: int, i: int) -> None:
            await nc.request(echo_subject, sample, timeout=30)

        order = ["bare NATS echo", *ops]
        for r in range(opts.rounds):
            figures = [await closed_loop("bare NATS echo", CLIENTS, opts.seconds, echo_op)]
            # the gateways in turn first and second, so a drift within a round favours neither
            for name, op in sorted(ops.items(), reverse=r % 2 == 1):
                # worker ids apart per round: each round's apps are new ones
                async def shifted(
                    w: int, i: int, _op: Callable[[int, int], Awaitable[None]] = op, _r: int = r
                ) -> None:
                    await _op(w + 100_000 * _r, i)

                figures.append(await closed_loop(name, CLIENTS, opts.seconds, shifted))
            rounds.append(sorted(figures, key=lambda f: order.index(f.name)))
    finally:
        await nc.close()
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        for url in urls:
            await drop_database(url)

    print(f"Machine: {machine()}  ")
    print(
        f"Command: `.venv/bin/python bench/ceiling.py --rounds {opts.rounds} --seconds {opts.seconds:g}`\n"
    )
    names = [f.name for f in rounds[0]]
    print(
        "| round | "
        + " | ".join(f"{n} @{CLIENTS}" for n in names)
        + " | "
        + " | ".join(f"{n} / echo" for n in names[1:])
        + " |"
    )
    print("|---" * (2 * len(names)) + "|")
    for r, figures in enumerate(rounds, 1):
        echo = figures[0].rate
        print(
            f"| {r} | "
            + " | ".join(f"{f.rate:,.0f}/s (p99 {f.p99_ms:.1f} ms)" for f in figures)
            + " | "
            + " | ".join(f"**{f.rate / echo:.2f}**" for f in figures[1:])
            + " |"
        )


if __name__ == "__main__":
    asyncio.run(main())
