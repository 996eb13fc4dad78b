"""Invariant 7: no private key in clear in anything certplane prints, sends or stores.

A whole session (add, a refused add with a wrong key, update, info, remove) runs with the
gateway logging at DEBUG and exporting every span; a separate NATS client records every
message on the bus. Then everything is searched for every form of every key used.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import asyncpg
import nats
from cryptography.hazmat.primitives import serialization

from services.devcerts import DevCA, Issued, new_key
from tests.conftest import run_cli
from tests.e2e.conftest import RouterProcess, ServiceProcess, wait_for_gateway


def forms(key) -> list[bytes]:
    """Every spelling of a key we can think of: PEM lines, DER in base64 and hex, the scalar.

    Only spellings that carry secret bytes count: an EC key's encoding ends with its public
    key, which every certificate for it carries too. The last PEM line of a PKCS#8 P-256 key
    is public key only, and it turned up in the base64 of a certificate's DER (298 times in
    300 leaves); such a line is a spelling of the certificate, not a leak.
    """
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    out: list[bytes] = []
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
        pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
        lines = [line for line in pem.splitlines() if len(line) >= 40 and b"-----" not in line]
        out += [line for line in lines if base64.b64decode(line) not in public]
        out += [base64.b64encode(der), der.hex().encode()]
        out += [tail for tail in (der[-40:],) if tail not in public]
    out.append(str(key.private_numbers().private_value).encode())
    return out


def leaks(haystack: bytes, keys) -> int:
    return sum(form in haystack for key in keys for form in forms(key))


async def test_no_private_key_in_clear_anywhere(settings, ca: DevCA, tmp_path: Path) -> None:
    first = ca.leaf("www.example.com")
    second = ca.leaf("www.example.com")
    wrong: Issued = Issued(first.cert, new_key())
    keys = [first.key, second.key, wrong.key]
    d = tmp_path / "c"
    d.mkdir()
    for name, data in {
        "crt": first.cert_pem,
        "key": first.key_pem,
        "crt2": second.cert_pem,
        "key2": second.key_pem,
        "wrong": wrong.key_pem,
        "chain": ca.intermediate.cert_pem,
    }.items():
        (d / name).write_bytes(data)

    bus: list[bytes] = []
    spy = await nats.connect(settings.nats_url)

    async def record(msg) -> None:
        bus.append(msg.subject.encode() + b" " + bytes(msg.data))

    await spy.subscribe(f"{settings.prefix}.>", cb=record)
    await spy.subscribe("_INBOX.>", cb=record)
    gateway = ServiceProcess(
        settings,
        ["gateway"],
        tmp_path / "gateway.log",
        CERTPLANE_LOG_LEVEL="DEBUG",
        CERTPLANE_TRACE_EXPORT="console",
        CERTPLANE_TRACE_SAMPLE="1",
    ).start()
    await asyncio.to_thread(wait_for_gateway, settings)
    projector = ServiceProcess(
        settings,
        ["projector"],
        tmp_path / "projector.log",
        CERTPLANE_LOG_LEVEL="DEBUG",
        CERTPLANE_METRICS_EXPORT="console",
        CERTPLANE_METRICS_INTERVAL="1",
    ).start()
    router = await asyncio.to_thread(
        RouterProcess(settings, tmp_path, "router-1", "echo", CERTPLANE_LOG_LEVEL="DEBUG").start
    )
    outputs: list[str] = []

    def cli(*args: str, code: int = 0) -> None:
        result = run_cli(settings, *args)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode == code, result.stderr

    await asyncio.to_thread(cli, "apps:create", "shop")
    await asyncio.to_thread(cli, "domains:add", "www.example.com", "-a", "shop")
    await asyncio.to_thread(
        cli, "certs:add", str(d / "crt"), str(d / "wrong"), "-a", "shop", code=1
    )
    await asyncio.to_thread(
        cli, "certs:add", str(d / "chain"), str(d / "crt"), str(d / "key"), "-a", "shop", "--json"
    )
    await asyncio.to_thread(
        cli,
        "certs:update",
        str(d / "chain"),
        str(d / "crt2"),
        str(d / "key2"),
        "-a",
        "shop",
        "--confirm",
        "shop",
    )
    await asyncio.to_thread(cli, "certs:info", "-a", "shop", "--json")
    await asyncio.to_thread(cli, "certs", "-a", "shop")
    await asyncio.to_thread(cli, "certs:remove", "-a", "shop", "--confirm", "shop", "--json")
    await asyncio.to_thread(cli, "domains:add", "api.example.com", "-a", "shop")
    await asyncio.to_thread(
        cli, "certs:add", str(d / "chain"), str(d / "crt"), str(d / "key"), "-a", "shop", "--wait"
    )
    kv = await spy.jetstream().key_value(settings.router_bucket)
    kv_values = b"\n".join([(await kv.get(k)).value for k in await kv.keys()])
    assert b"chain_pem" in kv_values  # routers really got config, with keys sealed to them
    await spy.flush()
    await asyncio.sleep(0.2)
    await spy.jetstream().delete_key_value(settings.router_bucket)
    await spy.close()
    assert gateway.stop() == 0
    assert projector.stop() == 0
    assert router.stop() == 0
    log_text = gateway.output + projector.output + router.output
    assert "router-1 listening" in router.output
    # lag and throughput are exported as OpenTelemetry metrics
    assert "certplane.projector.events" in projector.output
    assert "certplane.projector.lag" in projector.output
    assert (
        "certplane.gateway" in log_text and '"trace_id"' in log_text
    )  # logs and spans were really captured

    conn = await asyncpg.connect(settings.database_url)
    tables = await conn.fetch(
        "select schemaname, tablename from pg_tables"
        " where schemaname not in ('pg_catalog', 'information_schema')"
    )
    assert any(r[0] == "router_config_g1" for r in tables)  # projections are searched too
    rows = []
    for schema, table in tables:
        query = f'select t::text from "{schema}"."{table}" t'
        rows += [str(r[0]).encode() for r in await conn.fetch(query)]
    stored = b"\n".join(rows)
    await conn.close()
    assert b"cert.added" in stored and len(bus) > 10  # the haystacks are the real ones

    assert leaks("\n".join(outputs).encode(), keys) == 0, "a private key reached CLI output"
    assert leaks(log_text.encode(), keys) == 0, "a private key reached a log line or a span"
    assert leaks(b"\n".join(bus), keys) == 0, "a private key crossed NATS in clear"
    assert leaks(stored, keys) == 0, "a private key is stored in clear"
    assert leaks(kv_values, keys) == 0, "a private key reached ROUTER_CONFIG in clear"
    assert leaks(first.key_pem + second.key_pem, keys) > 0  # and the search does find a key
