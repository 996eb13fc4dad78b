"""Tamper evidence against real PostgreSQL: a superuser with the trigger disabled changes a
byte, deletes, swaps, forges an append with a recomputed chain, forges a checkpoint, or
forks the log; `audit:verify` names the position every time, and consistency proofs tell
an honest log from a forked one."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt

import asyncpg
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from events.app import CreateApp, DestroyApp
from events.domain import AddDomain, RemoveDomain
from services.audit.keys import load_signing_key
from services.audit.log_integrity import ROW_COLUMNS, LogRow
from services.audit.proofs import ProofFailed, consistency_proof, inclusion_proof
from services.audit.verify import db_heads, verify_database
from services.domain.event_content import event_content
from services.domain.merkle import leaf_hash, verify_inclusion
from services.domain.tree_head import sign
from services.domain.writer_mac import writer_key
from services.gateway.key_custody import load_master_key
from services.storage.hash_chain import content_hash, event_hash
from tests.conftest import projected
from tests.integration.helpers import add_cert


async def sealed_history(cp, ca, db_url: str) -> int:
    """A few apps, domains and certificates; returns the head once the sealer covers it."""
    last = 0
    for i in range(6):
        app = f"shop-{i}"
        await cp.command(CreateApp(app=app))
        await cp.command(AddDomain(app=app, hostname=f"www.shop-{i}.test"))
        leaf = ca.leaf(f"www.shop-{i}.test")
        last = (
            await add_cert(cp, app, [leaf.cert_pem, ca.intermediate.cert_pem], leaf.key_pem)
        ).position
    await projected(cp, last)
    await until_sealed(db_url, last)
    return last


async def until_sealed(db_url: str, size: int) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        for _ in range(200):
            if await conn.fetchval("select max(size) from audit_tree_heads") == size:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the sealer did not sign size {size}")
    finally:
        await conn.close()


class Superuser:
    """Tampering as the database's owner would: the append-only trigger disabled."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    async def __aenter__(self) -> asyncpg.Connection:
        self.conn = await asyncpg.connect(self.db_url)
        await self.conn.execute("alter table events disable trigger user")
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.execute("alter table events enable trigger user")
        await self.conn.close()


async def rehash_from(conn: asyncpg.Connection, position: int) -> None:
    """Recompute the chain from `position` on, as a forger covering their tracks would."""
    prev = bytes(await conn.fetchval("select hash from events where position = $1", position - 1))
    rows = await conn.fetch(
        f"select {ROW_COLUMNS} from events where position >= $1 order by position", position
    )
    for record in rows:
        row = LogRow(*record)
        written = event_content(row.stream_id, row.event_id, row.command_id, row.command_index,
                                row.type, row.schema_version, row.data)  # fmt: skip
        content = content_hash(written, row.metadata)
        h = event_hash(prev, row.position, row.stream_version, row.recorded_at, content)
        await conn.execute(
            "update events set prev_hash = $2, hash = $3 where position = $1", row.position, prev, h
        )
        prev = h
    await conn.execute("update log_head set position = $1, hash = $2", rows[-1][0], prev)


@pytest.fixture(params=["one pass", "in chunks"])
def chunked(request) -> bool:  # type: ignore[no-untyped-def]
    """Each verification both ways: one pass, and chunks of 4 checked by worker processes
    (what `audit:verify` does on a long log) — they must name the same problem."""
    return request.param == "in chunks"


async def verify(db_url: str, settings, *, macs: bool = False, chunked: bool = False):
    conn = await asyncpg.connect(db_url)
    try:
        trusted = load_signing_key(settings).public_key().public_bytes_raw()
        key = writer_key(load_master_key(settings).secret) if macs else None
        if chunked:
            return await verify_database(
                conn, trusted_key=trusted, writer_key=key, url=db_url, chunk=4, workers=2
            )
        return await verify_database(conn, trusted_key=trusted, writer_key=key)
    finally:
        await conn.close()


async def test_an_honest_log_verifies_against_its_signed_checkpoints(
    cp, projectors, ca, db_url, settings, chunked
) -> None:
    head = await sealed_history(cp, ca, db_url)
    outcome = await verify(db_url, settings, macs=True, chunked=chunked)
    assert outcome.ok, outcome.problem
    assert outcome.events == head and outcome.heads[-1].size == head
    assert len(outcome.heads) >= head // settings.audit_seal_every  # every N events, at least


async def test_without_worker_processes_verify_falls_back_to_one_pass(
    cp, projectors, ca, db_url, settings, monkeypatch
) -> None:
    from concurrent.futures.process import BrokenProcessPool

    import services.audit.verify as verify_module

    async def no_workers(*_: object) -> None:
        raise BrokenProcessPool("a worker died at start")

    head = await sealed_history(cp, ca, db_url)
    async with Superuser(db_url) as conn:
        position = await flip_one_byte(conn)
    monkeypatch.setattr(verify_module, "_verify_in_chunks", no_workers)
    outcome = await verify(db_url, settings, chunked=True)
    assert outcome.problem is not None and outcome.problem.position == position
    assert outcome.events == position - 1 < head  # checked from the start, in one pass


async def flip_one_byte(conn: asyncpg.Connection) -> int:
    data = await conn.fetchval("select data::text from events where position = 5")
    i = next(j for j in range(data.index('":'), len(data)) if data[j].isalpha())
    changed = data[:i] + data[i].swapcase() + data[i + 1 :]  # one byte of one value
    await conn.execute("update events set data = $1::json where position = 5", changed)
    return 5


async def delete_one(conn: asyncpg.Connection) -> int:
    await conn.execute("delete from events where position = 7")
    return 7


async def swap_two(conn: asyncpg.Connection) -> int:
    await conn.execute("update events set position = -8 where position = 8")
    await conn.execute("update events set position = 8 where position = 9")
    await conn.execute("update events set position = 9 where position = -8")
    return 8


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        (flip_one_byte, "content does not match its hash"),
        (delete_one, "missing"),
        (swap_two, "does not follow from the previous event"),
    ],
)
async def test_tampering_in_place_is_named_by_position(
    cp, projectors, ca, db_url, settings, tamper, says, chunked
) -> None:
    await sealed_history(cp, ca, db_url)
    async with Superuser(db_url) as conn:
        position = await tamper(conn)
    outcome = await verify(db_url, settings, chunked=chunked)
    assert outcome.problem is not None and not outcome.ok
    assert outcome.problem.position == position, outcome.problem
    assert says in outcome.problem.reason


async def test_a_rewrite_with_a_recomputed_chain_contradicts_the_signed_tree(
    cp, projectors, ca, db_url, settings, chunked
) -> None:
    head = await sealed_history(cp, ca, db_url)
    async with Superuser(db_url) as conn:
        await conn.execute(
            "update events set metadata = replace(metadata::text, 'test@certplane',"
            " 'someone-else')::json where position = 12"
        )
        await rehash_from(conn, 12)
    outcome = await verify(db_url, settings, chunked=chunked)
    assert outcome.problem is not None
    assert "rewritten" in outcome.problem.reason
    first_head_after = min(h for h in range(12, head + 1) if h % settings.audit_seal_every == 0)
    assert f"–{first_head_after}" in outcome.problem.reason  # the range it must be in
    # the data itself rewritten and re-hashed: the operator's check names the event exactly
    async with Superuser(db_url) as conn:
        await flip_one_byte(conn)
        await rehash_from(conn, 5)
    outcome = await verify(db_url, settings, macs=True, chunked=chunked)
    assert outcome.problem is not None and outcome.problem.position == 5
    assert "not written by a gateway" in outcome.problem.reason


async def test_a_forged_append_with_a_recomputed_chain_is_never_signed(
    cp, projectors, ca, db_url, settings, chunked
) -> None:
    head = await sealed_history(cp, ca, db_url)
    async with Superuser(db_url) as conn:
        row = LogRow(
            *await conn.fetchrow(f"select {ROW_COLUMNS} from events where position = $1", head)
        )
        data = row.data.replace("shop-5", "evil-5")
        written = event_content(row.stream_id, "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                                "6fa459ea-ee8a-3ca4-894e-db77e160355e", 0, row.type,
                                row.schema_version, data)  # fmt: skip
        content = content_hash(written, row.metadata)
        recorded = row.recorded_at + dt.timedelta(milliseconds=1)
        h = event_hash(bytes(row.hash), head + 1, row.stream_version + 1, recorded, content)
        await conn.execute(
            "insert into events (position, stream_id, stream_version, event_id, command_id,"
            " command_index, type, schema_version, data, metadata, recorded_at, prev_hash, hash)"
            " values ($1, $2, $3, '1b4e28ba-2fa1-11d2-883f-0016d3cca427',"
            " '6fa459ea-ee8a-3ca4-894e-db77e160355e', 0, $4, $5, $6::json, $7::json, $8, $9, $10)",
            head + 1, row.stream_id, row.stream_version + 1, row.type, row.schema_version, data,
            row.metadata, recorded, bytes(row.hash), h,
        )  # fmt: skip
        await conn.execute("update log_head set position = $1, hash = $2", head + 1, h)
    conn = await asyncpg.connect(db_url)
    for _ in range(300):  # the sealer retries it a few times, then stops on it
        letter = await conn.fetchval(
            "select error from projector_dead_letters where name = 'sealer'"
        )
        if letter:
            break
        await asyncio.sleep(0.05)
    assert await conn.fetchval("select max(size) from audit_tree_heads") == head  # not signed
    await conn.close()
    assert "not written by a gateway" in letter
    outcome = await verify(db_url, settings, chunked=chunked)
    assert outcome.problem is None and outcome.unsealed == (head + 1, head + 1)
    outcome = await verify(db_url, settings, macs=True, chunked=chunked)
    assert outcome.problem is not None and outcome.problem.position == head + 1


async def test_a_checkpoint_signed_with_another_key_is_refused(
    cp, projectors, ca, db_url, settings, chunked
) -> None:
    head = await sealed_history(cp, ca, db_url)
    conn = await asyncpg.connect(db_url)
    honest = (await db_heads(conn))[-1]
    forged = sign(Ed25519PrivateKey.generate(), head + 50, bytes.fromhex(honest.root_hash),
                  dt.datetime.now(dt.UTC))  # fmt: skip
    await conn.execute(
        "insert into audit_tree_heads values ($1, $2, $3, $4, $5, $6)",
        forged.size, bytes.fromhex(forged.root_hash), forged.signed_at, forged.key_id,
        base64.b64decode(forged.public_key), base64.b64decode(forged.signature),
    )  # fmt: skip
    await conn.close()
    outcome = await verify(db_url, settings, chunked=chunked)
    assert outcome.problem is not None and "not by the trusted key" in outcome.problem.reason
    conn = await asyncpg.connect(db_url)
    try:  # unpinned, two keys are one too many
        outcome = await verify_database(conn)
    finally:
        await conn.close()
    assert outcome.problem is not None and "several keys" in outcome.problem.reason


async def test_consistency_passes_for_an_honest_log_and_fails_for_a_fork(
    cp, projectors, ca, db_url, settings
) -> None:
    await sealed_history(cp, ca, db_url)
    conn = await asyncpg.connect(db_url)
    heads = await db_heads(conn)
    old, new = heads[0], heads[-1]
    assert old.size < new.size
    assert await consistency_proof(conn, old, new) is not None  # raises if inconsistent
    proof = await inclusion_proof(conn, 3, new)
    assert verify_inclusion(bytes.fromhex(proof.leaf_hash), 2, new.size,
                            [bytes.fromhex(p) for p in proof.proof], bytes.fromhex(new.root_hash))  # fmt: skip
    await conn.close()
    # the operator (who holds the signing key) forks history before `old` and signs the fork
    async with Superuser(db_url) as su:
        await su.execute(
            "update events set data = replace(data::text, 'shop-0', 'shop-x')::json"
            " where position = 2"
        )
        await rehash_from(su, 2)
        rows = await su.fetch("select hash from events order by position")
    from services.domain.merkle import root_of

    fork_root = root_of(leaf_hash(bytes(r[0])) for r in rows)
    forked = sign(load_signing_key(settings), len(rows), fork_root, dt.datetime.now(dt.UTC))
    conn = await asyncpg.connect(db_url)
    try:
        with pytest.raises(ProofFailed, match="forked or rewritten"):
            await consistency_proof(conn, old, forked)
        with pytest.raises(ProofFailed, match="rewritten"):
            await inclusion_proof(conn, 2, new)  # the honest head no longer holds this event
    finally:
        await conn.close()
    assert msgspec.json.encode(forked)  # a well-formed, validly signed head: still refused


async def test_a_replay_agrees_with_the_live_projections_both_ways(
    cp, projectors, ca, db_url, settings
) -> None:
    """The chunked replay (two connections, first-draw DNS targets) and the exact one (DNS
    targets allocated in log order) give what the dns_targets and certificates projections
    show now."""
    from services.audit.replay import FirstDraws, Moment, app_summary, apps_at, snapshot
    from services.domain.dns_target import render

    last = await sealed_history(cp, ca, db_url)
    await cp.command(DestroyApp(app="shop-2"))
    last = (await cp.command(RemoveDomain(app="shop-3", hostname="www.shop-3.test"))).position
    await projected(cp, last)
    conn, spare = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    try:
        projected_targets = dict(
            await conn.fetch("select hostname, target from dns_targets.dns_targets")
        )
        async with conn.transaction(readonly=True), spare.transaction(readonly=True):
            snap = await snapshot(conn, Moment(), settings.dns_zone, dns=False)
            upto, draws = Moment(position=snap.position), FirstDraws()
            fast = {
                app.name: app_summary(
                    app, lambda h, k=keys: render(k[h], settings.dns_zone) if h in k else None
                )
                async for app, keys in apps_at(conn, upto, draws=draws, spare=spare, chunks=3)
            }
            exact_snap = await snapshot(conn, upto, settings.dns_zone)
            exact = {
                app.name: app_summary(app, exact_snap.targets)
                async for app, _ in apps_at(conn, upto)
            }
    finally:
        await conn.close()
        await spare.close()
    assert draws.exact and fast == exact
    assert sorted(fast) == ["shop-0", "shop-1", "shop-3", "shop-4", "shop-5"]
    replayed = {h: d["dns_target"] for s in fast.values() for h, d in s["domains"].items()}
    assert replayed == projected_targets  # the replay re-derives what the projection allocated
