"""Router figures, in one run:

- propagation: from an AddCert's accepted reply to the moment every one of N routers (20)
  reports, xDS-style, that it serves that log position (p50/p99 over many adds);
- handshake rate: new TLS 1.3 handshakes per second against one router (EC P-256, chosen
  by SNI) beside a minimal asyncio `ssl` server with the same certificate as its only one,
  with the same client processes; the ratio is the figure;
- memory: a router's resident set with 10,000 hostnames loaded (each its own certificate
  and key, the worst case), beside the same router with none.

    .venv/bin/python bench/router.py [--routers 20] [--adds 60] [--seconds 5]

Uses CERTPLANE_DATABASE_URL / CERTPLANE_NATS_URL (a fresh database and prefix per run).
Prints a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import nats
from cryptography.hazmat.primitives import hashes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import drop_database, machine, percentile, scratch_database
from events.app import CreateApp
from events.domain import AddDomain
from events.endpoint import EndpointType
from events.replies import Accepted
from events.router import ConfigCheckpoint, RouterConfigEntry, RouterStatus
from services.cli.client import ControlPlane
from services.config import Settings
from services.devcerts import DevCA, issue
from services.domain.key_envelope import MasterKey, RouterSealer, public_bytes
from services.projectors.service import router_bucket
from services.router_key import load_router_private_key
from services.subjects import CHECKPOINT_KEY, Subjects, kv_key
from tests.integration.helpers import add_cert

REPO = Path(__file__).resolve().parent.parent
STATUS = msgspec.json.Decoder(RouterStatus)

BASELINE_SERVER = """
import asyncio, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1])
async def handle(reader, writer):
    try:
        await reader.read()
    except Exception:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

HANDSHAKE_CLIENT = """
import socket, ssl, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # keep the client cheap: the server is what is measured
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
count, deadline = 0, time.perf_counter() + seconds
while time.perf_counter() < deadline:
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname=host):
            count += 1
print(count)
"""


def spawn(args: list[str], env: dict[str, str], **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, cwd=REPO, **kw)  # type: ignore[call-overload, no-any-return]


def certplane(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli.main", *args]


def rss_mb(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class Routers:
    """N `certplane router` processes, and their status reports as they arrive."""

    def __init__(self, env: dict[str, str], tmp: Path, count: int, name: str) -> None:
        self.ready = [tmp / f"{name}-{i}.ready" for i in range(count)]
        self.procs = [
            spawn(certplane("router", "--id", f"{name}-{i}", "--https-port", "0",
                            "--http-port", "-1", "--ready-file", str(self.ready[i])), env)
            for i in range(count)
        ]  # fmt: skip
        self.ids = {f"{name}-{i}" for i in range(count)}

    def ports(self, timeout: float = 60) -> list[int]:
        deadline = time.monotonic() + timeout
        while not all(p.exists() for p in self.ready):
            if time.monotonic() > deadline:
                raise TimeoutError("routers did not start")
            time.sleep(0.05)
        return [
            int(json.loads(p.read_text())["addresses"][0].rsplit(":", 1)[1]) for p in self.ready
        ]

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


async def propagation(
    settings: Settings, env: dict[str, str], tmp: Path, ca: DevCA, count: int, adds: int
) -> tuple[list[float], float]:
    routers = Routers(env, tmp, count, "prop")
    applied: dict[str, int] = {}
    reached: dict[int, dict[str, float]] = {}
    nc = await nats.connect(settings.nats_url)

    async def on_status(msg) -> None:  # type: ignore[no-untyped-def]
        status = STATUS.decode(msg.data)
        applied[status.router_id] = status.position
        now = time.perf_counter()
        for position, seen in reached.items():
            if status.position >= position:
                seen.setdefault(status.router_id, now)

    await nc.subscribe(Subjects(settings.prefix).all_router_statuses(), cb=on_status)
    try:
        routers.ports()
        while set(applied) != routers.ids:  # every router has reported once
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        times = []
        async with ControlPlane(settings.nats_url, settings.prefix, actor="bench") as cp:
            for i in range(adds):
                app, host = f"prop-{i}", f"www.prop-{i}.test"
                await cp.command(CreateApp(app=app))
                await cp.command(AddDomain(app=app, hostname=host))
                leaf = ca.leaf(host)
                chain = [leaf.cert_pem, ca.intermediate.cert_pem]
                reply = await add_cert(cp, app, chain, leaf.key_pem)
                accepted = time.perf_counter()
                assert isinstance(reply, Accepted), reply
                seen = reached.setdefault(reply.position, {})
                for router_id, position in applied.items():  # reported before we looked
                    if position >= reply.position:
                        seen.setdefault(router_id, accepted)
                deadline = accepted + 30
                while len(seen) < count and time.perf_counter() < deadline:
                    await asyncio.sleep(0.001)
                assert len(seen) == count, f"only {len(seen)} of {count} routers applied"
                times.append((max(seen.values()) - accepted) * 1000)
                del reached[reply.position]
                await asyncio.sleep(0.05)
        return times, time.perf_counter() - started
    finally:
        await nc.close()
        routers.stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def handshakes(
    host: str, port: int, seconds: float, clients: int, server_pid: int
) -> tuple[float, float]:
    """(handshakes per second, server CPU ms per handshake): the second is not diluted by
    the clients' share of the two cores."""
    cpu = cpu_seconds(server_pid)
    procs = [
        subprocess.Popen([sys.executable, "-c", HANDSHAKE_CLIENT, host, str(port), str(seconds)],
                         stdout=subprocess.PIPE)
        for _ in range(clients)
    ]  # fmt: skip
    count = sum(int(p.communicate()[0]) for p in procs)
    return count / seconds, (cpu_seconds(server_pid) - cpu) * 1000 / max(count, 1)


def handshake_rate(
    env: dict[str, str], tmp: Path, host: str, material: Path, seconds: float
) -> list[tuple[str, float, float]]:
    routers = Routers(env, tmp, 1, "hs")
    baseline = spawn([sys.executable, "-c", BASELINE_SERVER, str(material)], env,
                     stdout=subprocess.PIPE)  # fmt: skip
    try:
        [router_port] = routers.ports()
        assert baseline.stdout is not None
        baseline_port = int(baseline.stdout.readline())
        time.sleep(2)  # the router has loaded its snapshot
        rows = []
        for _ in range(2):  # alternate, so drift affects both alike
            rate, cpu = handshakes(host, baseline_port, seconds, 2, baseline.pid)
            rows.append(("static ssl server", rate, cpu))
            rate, cpu = handshakes(host, router_port, seconds, 2, routers.procs[0].pid)
            rows.append(("certplane router (SNI)", rate, cpu))
        return rows
    finally:
        baseline.kill()
        routers.stop()


async def memory(
    settings: Settings, env: dict[str, str], tmp: Path, ca: DevCA, hostnames: int
) -> dict[str, float]:
    router_public = public_bytes(load_router_private_key(settings).public_key())
    sealer = RouterSealer(os.urandom(32), router_public)
    bucket = f"{settings.router_bucket}_MEM"
    nc = await nats.connect(settings.nats_url)
    out: dict[str, float] = {}
    try:
        kv = await router_bucket(nc, bucket)
        env = {**env, "CERTPLANE_ROUTER_BUCKET": bucket}
        empty = Routers(env, tmp, 1, "mem-empty")
        empty.ports()
        await asyncio.sleep(3)
        out["rss_empty"] = rss_mb(empty.procs[0].pid)[0]
        empty.stop()
        started = time.perf_counter()
        puts = []
        for i in range(hostnames):
            host = f"h{i}.mem.test"
            leaf = issue(host, issuer=ca.intermediate, sans=[host])
            key_id = f"key-{i}"
            seal = sealer.seal(leaf.key_pem, key_id=key_id,
                               derivation_secret=hashlib.sha256(key_id.encode()).digest())  # fmt: skip
            entry = RouterConfigEntry(
                hostname=host, app=f"app-{i % 1000}", endpoint=f"ep-{i}",
                endpoint_type=EndpointType.SNI,
                chain_pem=(leaf.cert_pem + ca.intermediate.cert_pem).decode(),
                fingerprint_sha256=leaf.cert.fingerprint(hashes.SHA256()).hex(),
                key=seal, position=i + 1,
            )  # fmt: skip
            puts.append(kv.put(kv_key(host), msgspec.json.encode(entry)))
            if len(puts) >= 500:
                await asyncio.gather(*puts)
                puts.clear()
        await asyncio.gather(*puts)
        await kv.put(CHECKPOINT_KEY, msgspec.json.encode(ConfigCheckpoint(position=hostnames)))
        out["generate_s"] = time.perf_counter() - started

        loaded: dict[str, int] = {}

        async def on_status(msg) -> None:  # type: ignore[no-untyped-def]
            status = STATUS.decode(msg.data)
            loaded[status.router_id] = status.hostnames

        await nc.subscribe(Subjects(settings.prefix).router_status("mem-0"), cb=on_status)
        router = Routers(env, tmp, 1, "mem")
        router.ports()
        started = time.perf_counter()
        while loaded.get("mem-0", 0) < hostnames:
            await asyncio.sleep(0.05)
            if time.perf_counter() - started > 300:
                raise TimeoutError(f"loaded only {loaded}")
        out["load_s"] = time.perf_counter() - started
        await asyncio.sleep(2)
        out["rss_loaded"], out["rss_peak"] = rss_mb(router.procs[0].pid)
        router.stop()
        await nc.jetstream().delete_key_value(bucket)
    finally:
        await nc.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--routers", type=int, default=20)
    parser.add_argument("--adds", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--hostnames", type=int, default=10_000)
    args = parser.parse_args()

    base = Settings.from_env()
    token = secrets.token_hex(4)
    url = await scratch_database(base.database_url, "bench_router")
    with tempfile.TemporaryDirectory(prefix="certplane-bench-") as directory:
        tmp = Path(directory)
        ca = DevCA.create("bench")
        (tmp / "ca.crt").write_bytes(ca.root.cert_pem)
        settings = dataclasses.replace(
            base, database_url=url, prefix=f"bench{token}",
            router_bucket=f"ROUTER_CONFIG_bench{token}",
            router_status_stream=f"ROUTER_STATUS_bench{token}",
            master_key=MasterKey.generate().to_text(), router_key_file=tmp / "router.key",
            extra_ca_file=str(tmp / "ca.crt"),
        )  # fmt: skip
        load_router_private_key(settings, create=True)
        env = {**os.environ, **settings.environment(), "CERTPLANE_LOG_LEVEL": "WARNING",
               "PYTHONPATH": str(REPO)}  # fmt: skip
        services = [
            spawn(certplane("gateway"), env),
            spawn(certplane("projector", "router_config"), env),
        ]
        try:
            async with ControlPlane(settings.nats_url, settings.prefix) as cp:
                for _ in range(300):
                    try:
                        await cp.gateway_key()
                        break
                    except Exception:
                        await asyncio.sleep(0.1)
            times, _ = await propagation(settings, env, tmp, ca, args.routers, args.adds)
            leaf = ca.leaf("www.hs.test")
            material = tmp / "hs.pem"
            material.write_bytes(leaf.cert_pem + ca.intermediate.cert_pem + leaf.key_pem)
            async with ControlPlane(settings.nats_url, settings.prefix, actor="bench") as cp:
                await cp.command(CreateApp(app="handshakes"))
                await cp.command(AddDomain(app="handshakes", hostname="www.hs.test"))
                chain = [leaf.cert_pem, ca.intermediate.cert_pem]
                assert isinstance(await add_cert(cp, "handshakes", chain, leaf.key_pem), Accepted)
            await asyncio.sleep(1)
            rates = handshake_rate(env, tmp, "www.hs.test", material, args.seconds)
            mem = await memory(settings, env, tmp, ca, args.hostnames)
        finally:
            for s in services:
                s.send_signal(signal.SIGTERM)
            for s in services:
                s.wait(20)
            await drop_database(url)

    static = [r for n, r, _ in rates if n.startswith("static")]
    router = [r for n, r, _ in rates if n.startswith("certplane")]
    ratio = sum(router) / sum(static)
    cpu_static = sum(c for n, _, c in rates if n.startswith("static")) / len(static)
    cpu_router = sum(c for n, _, c in rates if n.startswith("certplane")) / len(router)
    print(f"## Router — {dt.date.today()}\n")
    print(f"Machine: {machine()}  ")
    print(f"Command: `.venv/bin/python bench/router.py --routers {args.routers} --adds "
          f"{args.adds} --seconds {args.seconds:g} --hostnames {args.hostnames}`\n")  # fmt: skip
    print("| figure | value | target |\n|---|---|---|")
    print(f"| propagation, AddCert accepted → all {args.routers} routers report it applied, p50 | "
          f"{percentile(times, 0.5):.0f} ms | |")  # fmt: skip
    print(f"| propagation p99 ({len(times)} adds) | {percentile(times, 0.99):.0f} ms | < 250 ms |")
    for name, rate, cpu in rates:
        print(f"| new TLS 1.3 handshakes/s, {name} (2 client processes) | {rate:,.0f}/s "
              f"({cpu:.2f} ms server CPU each) | |")  # fmt: skip
    print(f"| handshake rate ratio router / static | {ratio:.2f} | ≥ 0.8 |")
    print(f"| server CPU per handshake, static / router | {cpu_static / cpu_router:.2f} | |")
    print(f"| router RSS, no hostnames | {mem['rss_empty']:.0f} MB | |")
    print(f"| router RSS, {args.hostnames:,} hostnames (own cert each) | {mem['rss_loaded']:.0f} MB "
          f"(peak {mem['rss_peak']:.0f} MB) | < 200 MB |")  # fmt: skip
    print(f"| time to load {args.hostnames:,} hostnames from the KV | {mem['load_s']:.1f} s | |")


if __name__ == "__main__":
    asyncio.run(main())
